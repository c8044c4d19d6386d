//! A node's life cycle: start, forming a network (new or from a seed), joining one, membership
//! changes, and shutdown until the ledger is released.

use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::RaftError;

use super::{raft_err, SporeSystem};
use crate::core::event::{NodeAnnouncement, SignedEvent};
use crate::core::projection::ChainHead;
use crate::core::sync;
use crate::core::types::{NetworkIdentity, NodeRole};
use crate::error::{Error, LedgerError};
use crate::net::TransportError;
use crate::node::datadir::CreatedDir;
use crate::raft::error::ConsensusError;
use crate::raft::{raft_id, RpcRequest, RpcResponse};
use crate::store::ledger::LedgerLock;
use crate::wire::rpc::{PeerNode, RemoteFailure};

impl SporeSystem {
    /// Opens the data dir and starts Raft, without forming a network: resumes a node after a
    /// restart, or waits to be added to a running network (see [`SporeSystem::join`]). The
    /// node's upkeep ([`SporeSystem::events`]) runs from the first start on.
    #[tracing::instrument(skip(self))]
    pub async fn start(&self) -> Result<(), Error> {
        let _turn = self.shared.gate.lock().await;
        self.start_in_turn().await
    }

    /// [`SporeSystem::start`], for a caller that holds the gate.
    pub(super) async fn start_in_turn(&self) -> Result<(), Error> {
        if self.running().is_ok() {
            return Ok(());
        }
        let cfg = sync::lock(&self.shared.life).config.take().ok_or(Error::NotStarted)?;
        // A data dir this start creates is removed again if the start fails.
        let created = match cfg.data_dir.as_deref().map(CreatedDir::create).transpose() {
            Ok(c) => c,
            Err(e) => {
                sync::lock(&self.shared.life).config = Some(cfg);
                return Err(e.into());
            }
        };
        match Self::launch(cfg.clone(), self.shared.fence.clone(), self.shared.backups.clone()).await {
            Ok(r) => {
                let mut launched = cfg;
                launched.key = Some(r.key.clone());
                launched.data_dir = Some(r.data_dir.clone());
                sync::lock(&self.shared.life).launched = Some(launched);
                *sync::write(&self.shared.running) = Some(Arc::new(r));
                let mut upkeep = sync::lock(&self.shared.upkeep);
                if upkeep.is_empty() {
                    upkeep.push(super::upkeep::spawn(Arc::downgrade(&self.shared)));
                    upkeep.push(super::checks::spawn(Arc::downgrade(&self.shared), self.shared.checks.clone()));
                    if let Some(policy) = self.shared.backups.policy() {
                        upkeep.push(super::backup::spawn(Arc::downgrade(&self.shared), policy.clone()));
                    }
                    if let Some(settings) = &self.shared.retention {
                        upkeep.push(super::retention::spawn(Arc::downgrade(&self.shared), settings.clone()));
                    }
                }
                Ok(())
            }
            Err(e) => {
                // Keep the configuration: a start that failed (say, its port still in use) can
                // be tried again.
                sync::lock(&self.shared.life).config = Some(cfg);
                if let Some(created) = created {
                    discard_failed_start(created).await;
                }
                Err(e)
            }
        }
    }

    /// Forms a network whose first voter is this node, and commits its genesis. Idempotent
    /// for the same identity after a restart; a different identity is an error.
    #[tracing::instrument(skip(self, identity), fields(network = %identity.network_name))]
    pub async fn initialize(&self, identity: NetworkIdentity) -> Result<(), Error> {
        self.start().await?;
        let r = self.running()?;
        let record = identity.to_record();
        if let Some(existing) = self.with_projection(|p| p.network().cloned())? {
            return if existing.network_id == record.network_id {
                Ok(())
            } else {
                Err(Error::AlreadyInitialized { network: existing.network_name })
            };
        }
        let members = BTreeMap::from([(raft_id(&r.me.node), r.me.clone())]);
        match r.raft.initialize(members).await {
            Ok(()) => {}
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {}
            Err(e) => return Err(raft_err(e)),
        }
        let founder = NodeAnnouncement {
            node: r.me.node,
            name: r.name.clone(),
            role: NodeRole::Sclerotium,
            addresses: if r.addresses.is_empty() { vec![r.me.addr.clone()] } else { r.addresses.clone() },
            capabilities: r.capabilities.clone(),
        };
        let genesis = SignedEvent::genesis(&r.key, record, founder);
        self.submit(genesis).await?;
        Ok(())
    }

    /// Forms a network from a seed spore: the same network, its projections and head. This
    /// node must be one of the seed's voters; it imports the seed's events (each signature
    /// verified again), becomes the first Raft member, and compacts its Raft log into a
    /// snapshot so that every node added later — the seed's other voters join with
    /// [`SporeSystem::join`] as usual — starts from the seed's state. New events extend the
    /// seed's chain. A data dir that already holds the same chain up to the seed's head is
    /// accepted as imported; any other non-empty data dir is refused.
    #[tracing::instrument(skip(self, path, policy), fields(seed = %path.as_ref().display()))]
    pub async fn form_from_seed(
        &self,
        path: impl AsRef<std::path::Path>,
        policy: crate::seed::VerifyPolicy,
    ) -> Result<ChainHead, Error> {
        self.start().await?;
        let r = self.running()?;
        let seed = crate::seed::read_file(path.as_ref(), policy)?;
        if !seed.header.includes_events {
            return Err(crate::seed::SeedError::EventsRequired.into());
        }
        let head = seed.head();
        let me = r.me.clone();
        let is_voter = seed
            .state
            .nodes
            .get(&me.node)
            .is_some_and(|n| n.role.is_authority() && n.status != crate::core::projection::NodeStatus::Left);
        if !is_voter {
            return Err(Error::NotASeedVoter(me.node));
        }
        let members_now = r.raft.metrics().borrow_watched().membership_config.membership().voter_ids().count();
        if members_now > 0 {
            let ours = self.head()?;
            return if ours.map(|h| (h.seq, h.hash)) >= Some((head.seq, head.hash))
                && self.with_projection(|p| p.fingerprint())? == Some(seed.header.fingerprint)
            {
                Ok(head)
            } else {
                Err(Error::AlreadyInitialized { network: seed.header.network.network_name.clone() })
            };
        }
        // Import: re-append the signed events (the ledger re-verifies and re-chains them; the
        // chain is deterministic, so it must land exactly on the seed's head).
        let ledger = r.ledger.clone();
        tokio::task::spawn_blocking(move || -> Result<(), Error> {
            let mut l = ledger.write_ledger()?;
            if !l.head().is_some_and(|h| h.seq == head.seq && h.hash == head.hash) {
                crate::seed::import(&mut l, &seed)?;
            } // else: imported already (`spore seed import`, or an earlier attempt)
              // The network is formed on this import: Raft adopts it as its base.
            l.set_imported(false)?;
            Ok(())
        })
        .await
        .map_err(|source| Error::Task { what: "seed import", source })??;

        // This node alone first; compact the log so later members start from a snapshot.
        let members = BTreeMap::from([(raft_id(&me.node), me.clone())]);
        match r.raft.initialize(members).await {
            Ok(()) | Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {}
            Err(e) => return Err(raft_err(e)),
        }
        let deadline = Instant::now() + r.timeouts.write;
        loop {
            let m = r.raft.metrics().borrow_watched().clone();
            if m.current_leader == Some(raft_id(&me.node)) && m.last_applied.is_some() {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::NoLeader { waited: r.timeouts.write });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Wait for a snapshot covering what was applied when it was asked for (the anchor
        // task may commit a checkpoint meanwhile; that entry need not be in it).
        let wanted = r.raft.metrics().borrow_watched().last_applied.map_or(0, |l| l.index);
        r.raft.trigger().snapshot().await.map_err(raft_err)?;
        loop {
            let m = r.raft.metrics().borrow_watched().clone();
            if let Some(snap) = m.snapshot {
                if snap.index >= wanted {
                    r.raft.trigger().purge_log(snap.index).await.map_err(raft_err)?;
                    break;
                }
            }
            if Instant::now() > deadline {
                let what = "the snapshot of the imported seed".to_string();
                return Err(ConsensusError::Timeout { what, waited: r.timeouts.write }.into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::info!(seq = head.seq, hash = %head.hash, "network formed from a seed");
        Ok(head)
    }

    /// Joins through `via` with a seed spore as the trust root: before asking to be added,
    /// checks that `via` belongs to the seed's network and that its chain passes through the
    /// seed's head (so the primary extends what the seed attests). Otherwise the join is
    /// refused ([`SeedError::NotExtended`](crate::seed::SeedError::NotExtended) or
    /// `WrongNetwork`) and nothing changes.
    pub async fn join_with_seed(
        &self,
        via: PeerNode,
        as_voter: bool,
        seed_path: impl AsRef<std::path::Path>,
        policy: crate::seed::VerifyPolicy,
    ) -> Result<(), Error> {
        use crate::seed::SeedError;
        use crate::wire::query::{Query, QueryAnswer};
        self.check_addresses([via.addr.as_str()])?;
        self.start().await?;
        let seed = crate::seed::read_file(seed_path.as_ref(), policy)?;
        let r = self.running()?;
        let answer =
            r.transport.call(&via, RpcRequest::Query(Query::ChainAt(seed.header.head_seq)), r.timeouts.rpc).await?;
        let (at, head, fingerprint) = match answer {
            RpcResponse::Query(Ok(QueryAnswer::Chain { at, head, fingerprint })) => (at, head, fingerprint),
            RpcResponse::Query(Err(failure)) => return Err(Error::Remote { peer: via.to_string(), failure }),
            other => {
                return Err(Error::UnexpectedResponse {
                    to: "a chain query",
                    got: format!("a {} answer", other.kind()),
                })
            }
        };
        if fingerprint != Some(seed.header.fingerprint) {
            let found = fingerprint.unwrap_or_default();
            return Err(SeedError::WrongNetwork { expected: seed.header.fingerprint, found }.into());
        }
        if at.map(|p| p.hash) != Some(seed.header.head_hash) {
            return Err(SeedError::NotExtended {
                seed_seq: seed.header.head_seq,
                primary_head: head.map(|h| h.seq),
                reason: match at {
                    None => "the primary's chain is shorter than the seed".into(),
                    Some(_) => "the primary's chain has a different event at the seed's head".into(),
                },
            }
            .into());
        }
        tracing::info!(seq = seed.header.head_seq, "the primary extends the seed; joining");
        self.join(via, as_voter).await
    }

    /// Asks the network (through `via`, any member) to add this node to the Raft membership,
    /// as a voter or a learner. An authority must have admitted this node first
    /// ([`SporeSystem::admit`]).
    ///
    /// A node running its own QUIC endpoint admits `via` and the Raft members `via` reports
    /// (best effort) before it asks: the leader must reach it before its registry knows anyone.
    /// Returns once the membership change is committed and this node holds the network's
    /// genesis (it can then write at once).
    pub async fn join(&self, via: PeerNode, as_voter: bool) -> Result<(), Error> {
        self.check_addresses([via.addr.as_str()])?;
        self.start().await?;
        let r = self.running()?;
        if let Some(admission) = &r.admission {
            admission.allow([via.node]);
            match r.transport.call(&via, RpcRequest::Status, r.timeouts.rpc).await {
                Ok(RpcResponse::Status(Ok(st))) => admission.allow(st.voters.into_iter().chain(st.learners)),
                other => tracing::debug!(via = %via, ?other, "the node joined through did not report its members"),
            }
        }
        let me = r.me.clone();
        drop(r);
        self.membership_rpc(Some(via), || RpcRequest::AddMember { node: me.clone(), voter: as_voter }).await?;
        self.await_network().await
    }

    /// Waits until this node's ledger holds the network's genesis, so that it can sign
    /// events. A new member applies what the leader committed only once the leader's next
    /// append tells it the commit index: without the wait, a write right after
    /// [`SporeSystem::join`] could find the node not yet part of any network
    /// ([`Error::NotInitialized`], which is also the answer after six write timeouts).
    async fn await_network(&self) -> Result<(), Error> {
        let deadline = Instant::now() + self.running()?.timeouts.write * 6;
        loop {
            if self.with_projection(|p| p.fingerprint().is_some())? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::NotInitialized);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Adds another node to the Raft membership (learner, then voter if asked). Runs on the
    /// leader, or is forwarded to it.
    pub async fn add_member(&self, node: PeerNode, as_voter: bool) -> Result<(), Error> {
        self.check_addresses([node.addr.as_str()])?;
        self.membership_rpc(None, || RpcRequest::AddMember { node: node.clone(), voter: as_voter }).await
    }

    /// Sends the membership request `req` makes (`AddMember` or `RemoveMember`) to the leader,
    /// through `via` first if given, until one takes it or the write timeout (six times) runs
    /// out. A refusal is [`Error::NotAdmitted`] when the registry does not hold the node as
    /// admitted, [`Error::Remote`] otherwise.
    pub(super) async fn membership_rpc(
        &self,
        via: Option<PeerNode>,
        req: impl Fn() -> RpcRequest,
    ) -> Result<(), Error> {
        let r = self.running()?;
        let deadline = Instant::now() + r.timeouts.write * 6;
        let mut target = via.or_else(|| self.leader_node()).unwrap_or_else(|| r.me.clone());
        loop {
            let res = r.transport.call(&target, req(), r.timeouts.write * 6).await;
            match res {
                Ok(RpcResponse::Membership(Ok(()))) => return Ok(()),
                Ok(RpcResponse::Membership(Err(RemoteFailure::NotLeader { leader: Some(l) }))) => target = l,
                Ok(RpcResponse::Membership(Err(RemoteFailure::Membership(refusal)))) => return Err(refusal.into()),
                Ok(RpcResponse::Membership(Err(failure @ RemoteFailure::Other(_)))) if !failure.is_starting() => {
                    let peer = target.to_string();
                    return Err(if failure.is_not_admitted() {
                        Error::NotAdmitted { peer, reason: failure.to_string() }
                    } else {
                        Error::Remote { peer, failure }
                    });
                }
                // Refused by the peer (our key is not admitted there: another network, or not
                // yet admitted): waiting would not change that.
                Err(e @ TransportError::Refused { .. }) => return Err(e.into()),
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(Error::NoLeader { waited: r.timeouts.write * 6 });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(l) = self.leader_node() {
                target = l;
            }
        }
    }

    /// Stops Raft, writes a projection checkpoint and syncs everything. Nothing acknowledged
    /// is lost (it was durable before it was acknowledged); this only makes restart faster.
    /// Returns once the ledger's database is closed (its lock released): the data dir can then
    /// be copied, moved or opened again (a [`Subscription`](super::Subscription) does not keep
    /// it open; it ends). Tasks of the stopped system that still hold the ledger delay that; after
    /// [`LEDGER_RELEASE_MAX`] it fails with [`LedgerError::StillOpen`].
    #[tracing::instrument(skip(self))]
    pub async fn shutdown(&self) -> Result<(), Error> {
        let _turn = self.shared.gate.lock().await;
        self.shutdown_in_turn().await
    }

    /// [`SporeSystem::shutdown`], for a caller that holds the gate.
    pub(super) async fn shutdown_in_turn(&self) -> Result<(), Error> {
        let Some(r) = sync::write(&self.shared.running).take() else { return Ok(()) };
        let ledger_dir = r.data_dir.join(crate::store::inspect::LEDGER_SUBDIR);
        r.abort_tasks();
        sync::lock(&r.binding).close();
        let _ = r.raft.shutdown().await;
        let ledger = r.ledger.clone();
        tokio::task::spawn_blocking(move || {
            let l = ledger.write_ledger()?;
            // A ledger a failed write poisoned has nothing more it can make durable; what it
            // applied without a sync is in the Raft log, which is applied again on restart.
            // (No projection checkpoint here: only one the chain attests is ever used.)
            if let Some(e) = l.poisoned_by() {
                tracing::warn!(error = %e, "ledger not synced at shutdown: an earlier write failed");
                return Ok(());
            }
            match l.sync() {
                // A failed Raft log write poisoned the shared database: the same holds.
                Err(LedgerError::EngineStopped { .. }) => {
                    tracing::warn!("ledger not synced at shutdown: an earlier write poisoned the database");
                    Ok(())
                }
                other => other.map_err(Error::from),
            }
        })
        .await
        .map_err(|source| Error::Task { what: "shutdown sync", source })??;
        let node = r.me.node;
        // Aborted tasks let go of the ledger as the runtime drops them; the database closes
        // with its last handle.
        drop(r);
        wait_until_closed(&ledger_dir, LEDGER_RELEASE_MAX).await?;
        tracing::info!(node = %node.short(), "spore system stopped");
        Ok(())
    }
}

/// After a failed start: removes the data dir `created` made once its ledger is closed (kept,
/// with a warning, if the ledger is still held after [`LEDGER_RELEASE_MAX`]).
pub(crate) async fn discard_failed_start(created: CreatedDir) {
    if !created.created() {
        return;
    }
    let ledger_dir = created.path().join(crate::store::inspect::LEDGER_SUBDIR);
    let removed = match wait_until_closed(&ledger_dir, LEDGER_RELEASE_MAX).await {
        Ok(()) => created.remove().map_err(Error::from),
        Err(e) => Err(e),
    };
    if let Err(e) = removed {
        tracing::warn!(error = %e, "could not remove the data dir of the failed start");
    }
}

/// Longest [`SporeSystem::shutdown`] waits for the stopped system's tasks to let go of the
/// ledger.
pub const LEDGER_RELEASE_MAX: Duration = Duration::from_secs(10);

/// Waits until no open database holds the ledger at `dir` (fjall's lock file can be locked),
/// at most `patience`. A ledger without a lock file (never opened, or a removed temporary
/// dir) is closed.
async fn wait_until_closed(dir: &Path, patience: Duration) -> Result<(), Error> {
    // fjall's lock file (`fjall::file::LOCK_FILE`, not exported), held while a database is open.
    let lock = dir.join("lock");
    let started = Instant::now();
    loop {
        let file = match std::fs::OpenOptions::new().read(true).write(true).open(&lock) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(LedgerError::Io { path: lock, source }.into()),
        };
        match file.try_lock() {
            // Dropping the file releases the lock at once.
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(source)) => return Err(LedgerError::Io { path: lock, source }.into()),
        }
        if started.elapsed() >= patience {
            return Err(LedgerError::StillOpen { path: dir.to_path_buf(), waited: started.elapsed() }.into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
