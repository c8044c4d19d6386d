//! Yielding a lost split-brain: keeps the losing chain, starts again on an empty ledger and
//! joins the winner (deciding is [`resolve`](super::resolve)'s); and [`SplitBrainError`], why
//! a step of either failed.

use std::path::PathBuf;

use super::{io_err, SporeSystem};
use crate::core::authority::BranchError;
use crate::core::projection::Rejection;
use crate::core::sync;
use crate::core::types::NodeId;
use crate::error::Error;
use crate::raft::{RpcRequest, RpcResponse};
use crate::store::ledger::{Ledger, LedgerConfig};
use crate::wire::rpc::{PeerNode, RemoteFailure};

/// Why a split-brain resolution step failed: one variant per step. The resolver retries
/// every second; [`SporeSystem::yield_to_winner`] returns it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SplitBrainError {
    /// The node asked about the other chain refused the query.
    #[error("{peer} could not answer: {failure}")]
    PeerRefused {
        /// Its address.
        peer: String,
        /// What it answered.
        failure: RemoteFailure,
    },
    /// The node asked about the other chain answered with another kind of response.
    #[error("unexpected answer from {peer}")]
    UnexpectedAnswer {
        /// Its address.
        peer: String,
    },
    /// The node asked holds no chain at all.
    #[error("{peer} holds no chain")]
    NoChain {
        /// Its address.
        peer: String,
    },
    /// The node asked holds another network's chain (its genesis differs).
    #[error("{peer} holds another network's chain")]
    OtherNetwork {
        /// Its address.
        peer: String,
    },
    /// The node asked answered a page of events that does not start where asked or goes
    /// backwards.
    #[error("{peer} answered events out of order")]
    OutOfOrder {
        /// Its address.
        peer: String,
    },
    /// This node's own branch after the fork does not check.
    #[error("our own branch does not check: {0}")]
    OwnBranch(#[source] BranchError),
    /// The two branches cannot be decided between (they are not the two sides of one fork).
    #[error("{0}")]
    Undecided(#[source] BranchError),
    /// This node holds no chain to record the resolution in.
    #[error("no chain")]
    NoOwnChain,
    /// Raft answered a re-proposal of a losing event, or the resolution event, with
    /// something else than applied or rejected: a bug, nobody matches on it; `got` is the
    /// answer in words.
    #[error("unexpected answer to {to}: {got}")]
    UnexpectedCommit {
        /// What was proposed, in words.
        to: &'static str,
        /// What came back.
        got: String,
    },
    /// The winner's rules rejected the resolution event.
    #[error("the resolution event was not committed: {0}")]
    ResolutionRejected(#[source] Rejection),
    /// The resolution report could not be encoded.
    #[error("the resolution report: {0}")]
    Report(#[source] serde_json::Error),
    /// [`SporeSystem::yield_to_winner`] on a node whose chain did not lose a recorded
    /// resolution.
    #[error("this node has nothing to yield")]
    NothingToYield,
}

impl SporeSystem {
    /// When this node's chain lost a split-brain and the winner has recorded the resolution:
    /// what [`SporeSystem::yield_to_winner`] will do (`None` otherwise).
    pub fn yield_plan(&self) -> Result<Option<crate::node::resolve::YieldPlan>, Error> {
        Ok(sync::lock(&self.running()?.resolver.yield_plan).clone())
    }

    /// Yields to the winner of a split-brain (see [`SporeSystem::yield_plan`] and the
    /// `resolve` module): exports this node's chain as a seed file and keeps its whole ledger
    /// directory under `DATA_DIR/forks/` (nothing is dropped), starts again on an empty ledger
    /// with the same key, and joins the winning network through the winner's node, as a voter
    /// if it was one; a latent node (outside Raft) syncs the winning chain by gossip instead,
    /// from the winner's node among its peers. The losing branch's valid events were
    /// re-proposed to the winner before it recorded the resolution. A node that yields twice
    /// for one fork (a latent node that synced the losing chain again from a peer that had not
    /// yielded yet) keeps each copy under its own name. Until the other members of the losing
    /// chain's Raft have yielded and joined the winner too, their Raft requests are refused, so
    /// they cannot take this node back into the losing chain (`schema/split-brain.md`).
    /// Returns the path of the exported seed.
    #[tracing::instrument(skip(self))]
    pub async fn yield_to_winner(&self) -> Result<PathBuf, Error> {
        // One restart at a time: the upkeep's automatic yield and a caller's take turns, and the
        // second finds nothing left to yield.
        let turn = self.shared.gate.lock().await;
        let plan = self.yield_plan()?.ok_or(SplitBrainError::NothingToYield)?;
        let (was_voter, was_member, lost_cluster, data_dir, ledger, key) = {
            let r = self.running()?;
            let st = self.status()?;
            // The losing cluster's other members: until they yield and join the winner too,
            // their Raft traffic would pull this node back into the losing cluster.
            let lost_cluster: Vec<NodeId> =
                st.voters.iter().chain(&st.learners).filter(|n| **n != r.me.node).copied().collect();
            (
                st.voters.contains(&r.me.node),
                st.raft_member,
                lost_cluster,
                r.data_dir.clone(),
                r.ledger.clone(),
                r.key.clone(),
            )
        };
        let forks_dir = data_dir.join("forks");
        std::fs::create_dir_all(&forks_dir).map_err(io_err(&forks_dir))?;
        let base = format!("lost-{}-{}", plan.resolution.loser.fork_seq, plan.resolution.loser.first.hash.short());
        let tag = (1..)
            .map(|n| if n == 1 { base.clone() } else { format!("{base}-{n}") })
            .find(|t| !forks_dir.join(format!("{t}.seed")).exists() && !forks_dir.join(format!("{t}.ledger")).exists())
            .unwrap_or(base);
        let seed_path = forks_dir.join(format!("{tag}.seed"));
        let sp = seed_path.clone();
        tokio::task::spawn_blocking(move || crate::seed::export(&ledger, &key, &sp, true))
            .await
            .map_err(|source| Error::Task { what: "seed export", source })??;
        // Keep the temporary dir (the embedded default) alive across the restart.
        let tempdir = self.running().ok().and_then(|r| sync::lock(&r.tempdir).take());
        if let Err(e) = self.shutdown_in_turn().await {
            // Nothing was moved: the node can be started again as it was.
            let mut life = sync::lock(&self.shared.life);
            life.config = life.launched.take();
            return Err(e);
        }
        let ledger_dir = data_dir.join(crate::store::inspect::LEDGER_SUBDIR);
        let kept = forks_dir.join(format!("{tag}.ledger"));
        std::fs::rename(&ledger_dir, &kept).map_err(io_err(&ledger_dir))?;
        // The new, empty ledger refuses the losing branch before anything can sync it back
        // from a peer that has not yielded yet.
        {
            let mut fresh = Ledger::open(&ledger_dir, LedgerConfig::default())?;
            fresh.refuse_branch(plan.resolution.loser.first, &lost_cluster)?;
        }
        tracing::warn!(seed = %seed_path.display(), ledger = %kept.display(), winner = %plan.winner_node.node.short(),
            "yielding to the split-brain winner: the losing chain is kept; joining the winner");
        // The losing chain's Raft members that have not yielded yet must not take the
        // restarted node back (see `node::resolve::YieldFence`).
        self.shared.fence.fence(lost_cluster.iter().copied());
        {
            let mut life = sync::lock(&self.shared.life);
            life.config = life.launched.take();
            if let Some(c) = life.config.as_mut() {
                // A latent node syncs the winning chain by gossip: from the winner's node too.
                if !c.gossip_peers.iter().any(|p| p.node == plan.winner_node.node) {
                    c.gossip_peers.push(plan.winner_node.clone());
                }
            }
        }
        self.start_in_turn().await?;
        if let Ok(r) = self.running() {
            *sync::lock(&r.tempdir) = tempdir;
        }
        drop(turn);
        if was_member {
            self.note_winner_members(&plan.winner_node).await;
            self.join(plan.winner_node.clone(), was_voter).await?;
        }
        Ok(seed_path)
    }

    /// Asks the winner's node for its Raft membership, so that members of the losing chain
    /// that already yielded and joined the winner are not refused. Best effort: if it does not
    /// answer, the fence stays as it is.
    async fn note_winner_members(&self, winner: &PeerNode) {
        let Ok(r) = self.running() else { return };
        match r.transport.call(winner, RpcRequest::Status, r.timeouts.rpc).await {
            Ok(RpcResponse::Status(Ok(st))) => self
                .shared
                .fence
                .winner_members(st.voters.into_iter().chain(st.learners).chain(std::iter::once(st.node))),
            other => tracing::debug!(winner = %winner.node.short(), ?other, "the winner did not report its membership"),
        }
    }
}
