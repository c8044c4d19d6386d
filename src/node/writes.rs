//! Writes: this node's events, signed and committed through the leader ([`SporeSystem::submit`]
//! and the registry operations built on it).

use openraft::async_runtime::WatchReceiver;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::provisional::is_member;
use super::status::halted_reason;
use super::SporeSystem;
use crate::core::event::{EventBody, NodeAnnouncement, ServiceAnnouncement, SignedEvent};
use crate::core::projection::ChainHead;
use crate::core::types::{Endpoint, NodeId, NodeRole, Str, Timestamp, TrustScore};
use crate::error::Error;
use crate::raft::error::ConsensusError;
use crate::raft::{ChainPoint, RpcRequest, RpcResponse, SporeResponse};
use crate::wire::rpc::RemoteFailure;

impl SporeSystem {
    /// Commits a signed event: on the leader directly, otherwise forwarded to it. Retries
    /// while no leader is known, up to the write timeout, then fails with
    /// [`Error::NoLeader`]. A rejected event returns [`Error::Rejected`] with its reason.
    #[tracing::instrument(skip(self, event), fields(kind = event.body.kind()))]
    pub async fn submit(&self, event: SignedEvent) -> Result<ChainPoint, Error> {
        let r = self.running()?;
        if let Some(why) = halted_reason(&r.raft.metrics().borrow_watched(), &r.health) {
            return Err(Error::Halted(why));
        }
        if let Some(d) = r.health.divergence() {
            return Err(Error::StateDivergence(d));
        }
        if r.role == NodeRole::Rhizomorph && !is_member(&r.raft, &r.me.node) {
            return self.submit_provisional(event).await;
        }
        let started = Instant::now();
        let mut backoff = Duration::from_millis(20);
        loop {
            // Raft may stop while this write waits (a full disk): say so at once.
            if let Some(why) = halted_reason(&r.raft.metrics().borrow_watched(), &r.health) {
                return Err(Error::Halted(why));
            }
            let outcome = match self.leader_node() {
                Some(l) if l.node == r.me.node => {
                    // A leader cut off in a minority cannot commit: bound the wait.
                    let left = r.timeouts.write.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
                    match tokio::time::timeout(left, r.proposer.propose(event.clone())).await {
                        Err(_) => return Err(Error::NoLeader { waited: started.elapsed() }),
                        Ok(Ok(resp)) => Some(Ok(resp)),
                        Ok(Err(ConsensusError::NotLeader)) => None,
                        Ok(Err(e)) => Some(Err(Error::Raft(e))),
                    }
                }
                Some(l) => match r.transport.call(&l, RpcRequest::Forward(event.clone()), r.timeouts.rpc).await {
                    Ok(RpcResponse::Forward(Ok(resp))) => Some(Ok(resp)),
                    Ok(RpcResponse::Forward(Err(failure @ RemoteFailure::Other(_)))) => {
                        Some(Err(Error::Remote { peer: l.to_string(), failure }))
                    }
                    // Not the leader any more, unreachable, timed out: find the leader again.
                    _ => None,
                },
                None => None,
            };
            match outcome {
                Some(Ok(SporeResponse::Applied(point))) => return Ok(point),
                Some(Ok(SporeResponse::Rejected(rej))) => return Err(Error::Rejected(rej)),
                Some(Ok(other @ (SporeResponse::None | SporeResponse::Batch(_)))) => {
                    return Err(Error::UnexpectedResponse { to: "an event", got: format!("{other:?}") })
                }
                Some(Err(e)) => tracing::debug!(error = %e, "write attempt failed; retrying"),
                None => {}
            }
            if started.elapsed() >= r.timeouts.write {
                return Err(Error::NoLeader { waited: started.elapsed() });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(250));
        }
    }

    pub(super) fn sign(&self, body: EventBody) -> Result<SignedEvent, Error> {
        let r = self.running()?;
        let fp = match r.fingerprint.get() {
            Some(fp) => *fp,
            None => {
                let fp = self.with_projection(|p| p.fingerprint())?.ok_or(Error::NotInitialized)?;
                *r.fingerprint.get_or_init(|| fp)
            }
        };
        // Recorded as verified here: this replica's apply will not check its own signature.
        Ok(r.checks.sign(&r.key, fp, Timestamp::now(), body))
    }

    /// This node's announcement (for an authority to [`SporeSystem::admit`]).
    pub fn announcement(&self) -> Result<NodeAnnouncement, Error> {
        let r = self.running()?;
        Ok(NodeAnnouncement {
            node: r.me.node,
            name: r.name.clone(),
            role: r.role,
            addresses: if r.addresses.is_empty() { vec![r.me.addr.clone()] } else { r.addresses.clone() },
            capabilities: r.capabilities.clone(),
        })
    }

    /// Admits a node into the registry (this node must be an authority). An address the
    /// transport cannot dial is refused ([`Error::BadAddress`]) before anything is signed.
    pub async fn admit(&self, node: NodeAnnouncement) -> Result<ChainPoint, Error> {
        self.check_addresses(node.addresses.iter().map(String::as_str))?;
        self.submit(self.sign(EventBody::NodeJoined(node))?).await
    }

    /// Replaces this node's announced addresses and capabilities (two events). On a latent
    /// node cut off from the voters both are held as provisional events and the error names
    /// the second. An address the transport cannot dial is refused ([`Error::BadAddress`])
    /// before anything is signed.
    pub async fn announce(&self, addresses: Vec<String>, capabilities: Vec<String>) -> Result<ChainPoint, Error> {
        self.check_addresses(addresses.iter().map(String::as_str))?;
        let me = self.node_id()?;
        let first = self.submit(self.sign(EventBody::AddressesChanged { node: me, addresses })?).await;
        if let Err(e) = &first {
            if !matches!(e, Error::Provisional { .. }) {
                return first;
            }
        }
        let second = self.submit(self.sign(EventBody::CapabilitiesChanged { node: me, capabilities })?).await;
        match (first, second) {
            (Err(held), Ok(_)) => Err(held),
            (_, second) => second,
        }
    }

    /// Registers a service offered by this node; returns its id.
    ///
    /// The id is a UUIDv7: time-ordered, so each new service lands at the end of the
    /// registry's id-ordered maps and indexes rather than at a random place in them (the
    /// 64-client write path spends ~8 % less CPU per event with 100k services registered),
    /// and a paging walk meets services registered during it at its end. Any UUID is
    /// accepted from a caller that signs its own events.
    pub async fn register_service(
        &self,
        name: &str,
        endpoints: Vec<Endpoint>,
        capabilities: Vec<String>,
        metadata: Vec<(String, String)>,
    ) -> Result<Uuid, Error> {
        let service_id = Uuid::now_v7();
        let node = self.node_id()?;
        let s = ServiceAnnouncement {
            service_id,
            name: name.into(),
            node,
            capabilities: capabilities.into_iter().map(Str::from).collect(),
            endpoints: endpoints.into(),
            metadata: metadata.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
        };
        self.submit(self.sign(EventBody::ServiceRegistered(s))?).await?;
        Ok(service_id)
    }

    /// Deregisters a service.
    pub async fn deregister_service(&self, service_id: Uuid, reason: &str) -> Result<ChainPoint, Error> {
        self.submit(self.sign(EventBody::ServiceDeregistered { service_id, reason: reason.to_string() })?).await
    }

    /// Exports a seed spore of this node's state at its current committed head to `path`,
    /// signed by this node, while writes continue; with `include_events` it also carries every
    /// event from genesis (a full backup that verifies offline), without it the state the
    /// chain attests and the events after it (see [`crate::seed::export`]). Written to a temporary file,
    /// synced, then renamed: a crash never leaves a half seed under `path`.
    pub async fn export_seed(
        &self,
        path: impl AsRef<std::path::Path>,
        include_events: bool,
    ) -> Result<ChainHead, Error> {
        let r = self.running()?;
        let (ledger, key, path) = (r.ledger.clone(), r.key.clone(), path.as_ref().to_path_buf());
        tokio::task::spawn_blocking(move || crate::seed::export(&ledger, &key, &path, include_events))
            .await
            .map_err(|source| Error::Task { what: "seed export", source })?
            .map(|e| {
                self.shared.metrics.seed_exports.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                e.head
            })
            .map_err(Error::from)
    }

    /// Renames this node in the registry.
    pub async fn rename(&self, name: &str) -> Result<ChainPoint, Error> {
        let me = self.node_id()?;
        self.submit(self.sign(EventBody::NodeUpdated { node: me, name: Some(name.to_string()), role: None })?).await
    }

    /// Sets another node's trust score (this node must be an authority).
    pub async fn set_trust(&self, node: NodeId, score: TrustScore, reason: &str) -> Result<ChainPoint, Error> {
        self.submit(self.sign(EventBody::TrustScoreChanged { node, score, reason: reason.to_string() })?).await
    }

    /// Commits that a node went offline (authority only; liveness detection is the latent tier's).
    pub async fn mark_offline(&self, node: NodeId, last_seen: Timestamp) -> Result<ChainPoint, Error> {
        self.submit(self.sign(EventBody::NodeWentOffline { node, last_seen })?).await
    }

    /// Commits that a node is back online.
    pub async fn mark_online(&self, node: NodeId) -> Result<ChainPoint, Error> {
        self.submit(self.sign(EventBody::NodeBackOnline { node })?).await
    }

    /// This node leaves: commits `NodeLeft` and leaves the Raft membership.
    pub async fn leave(&self, reason: &str) -> Result<(), Error> {
        let me = self.node_id()?;
        self.submit(self.sign(EventBody::NodeLeft { node: me, reason: reason.to_string() })?).await?;
        self.membership_rpc(None, || RpcRequest::RemoveMember { node: me }).await
    }
}
