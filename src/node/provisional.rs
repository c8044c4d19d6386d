//! Provisional writes of a latent node cut off from the voters: delivered to the Primary tier,
//! else held and offered again until committed.

use openraft::async_runtime::WatchReceiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use super::{SporeSystem, Timeouts};
use crate::core::event::SignedEvent;
use crate::core::keys::NodeKey;
use crate::core::projection::Rejection;
use crate::core::provisional::{ProvisionalError, ProvisionalEvent};
use crate::core::types::NodeId;
use crate::error::Error;
use crate::net::gossip::GossipService;
use crate::net::SharedTransport;
use crate::raft::state_machine::SharedLedger;
use crate::raft::{raft_id, ChainPoint, Raft, RpcRequest, RpcResponse, SporeResponse};
use crate::store::ledger::LedgerLock;
use crate::wire::rpc::{PeerNode, RemoteFailure};

impl SporeSystem {
    /// A latent node's write: wrapped with this node's statement that the event is not in the
    /// chain up to its head, delivered to the voters it knows (retried until the write
    /// timeout; the statement makes a retry after a lost answer harmless), else held as a
    /// provisional event and handed on by gossip ([`Error::Provisional`]).
    pub(super) async fn submit_provisional(&self, event: SignedEvent) -> Result<ChainPoint, Error> {
        self.running()?.writer.submit(event).await
    }

    /// The provisional events this node holds (written while cut off from the voters, or
    /// handed over by peers), not committed yet.
    pub fn provisional_events(&self) -> Result<Vec<ProvisionalEvent>, Error> {
        let r = self.running()?;
        let l = r.ledger.read_ledger()?;
        Ok(crate::store::provisional::list(&l, crate::store::provisional::HELD_MAX)?)
    }
}

/// What a latent node (outside the Raft membership) needs to hand a write to the voters, or
/// to hold it as a provisional event: for its own writes and for writes forwarded to it.
#[derive(Clone)]
pub(super) struct ProvisionalWriter {
    pub(super) raft: Raft,
    pub(super) transport: SharedTransport,
    pub(super) ledger: SharedLedger,
    pub(super) gossip: Option<Arc<GossipService>>,
    pub(super) me: PeerNode,
    pub(super) key: NodeKey,
    pub(super) timeouts: Timeouts,
}

impl ProvisionalWriter {
    /// Wraps `event` with this node's statement that it is not in the chain up to its head
    /// and delivers it to the voters it knows (retried until the write timeout; the statement
    /// makes a retry after a lost answer harmless), else holds it ([`Error::Provisional`]).
    #[tracing::instrument(level = "debug", skip_all, fields(kind = event.body.kind()))]
    pub(super) async fn submit(&self, event: SignedEvent) -> Result<ChainPoint, Error> {
        let head = self.ledger.read_ledger()?.head().map(|h| h.seq);
        let p = ProvisionalEvent::new(&self.key, event, head);
        let deadline = Instant::now() + self.timeouts.write;
        let mut backoff = Duration::from_millis(50);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match deliver_provisional(
                &self.raft,
                &self.transport,
                &self.ledger,
                self.gossip.as_deref(),
                &self.me,
                &p,
                left,
                self.timeouts.rpc,
            )
            .await
            {
                Some(SporeResponse::Applied(point)) => return Ok(point),
                Some(SporeResponse::Rejected(Rejection::ProvisionalDuplicate(point))) => return Ok(point),
                Some(SporeResponse::Rejected(rej)) => return Err(Error::Rejected(rej)),
                Some(other) => {
                    return Err(Error::UnexpectedResponse { to: "a provisional event", got: format!("{other:?}") })
                }
                None => {}
            }
            if Instant::now() + backoff >= deadline {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
        let id = p.id();
        {
            let l = self.ledger.read_ledger()?;
            crate::store::provisional::put(&l, &p)?;
        }
        tracing::info!(id = %id.short(), kind = p.event.body.kind(), "no voter reachable; holding the write as a provisional event");
        Err(Error::Provisional { id })
    }
}

/// Whether `node` is in `raft`'s membership (voter or learner).
pub(super) fn is_member(raft: &Raft, node: &NodeId) -> bool {
    let id = raft_id(node);
    raft.metrics().borrow_watched().membership_config.membership().nodes().any(|(n, _)| *n == id)
}

/// Hands a provisional event to the Primary tier and returns the state machine's answer, or
/// `None` if no voter answered within `within`. On the leader it is proposed here; otherwise
/// it goes to the leader this node knows, else to the registry's authorities and the gossip
/// bootstrap peers in turn (a member that is not the leader names the leader, tried next).
#[allow(clippy::too_many_arguments)]
#[tracing::instrument(level = "debug", skip_all, fields(id = %p.id().short()))]
async fn deliver_provisional(
    raft: &Raft,
    transport: &SharedTransport,
    ledger: &SharedLedger,
    gossip: Option<&GossipService>,
    me: &PeerNode,
    p: &ProvisionalEvent,
    within: Duration,
    rpc_timeout: Duration,
) -> Option<SporeResponse> {
    let deadline = Instant::now() + within;
    let m = raft.metrics().borrow_watched().clone();
    let leader = m.current_leader.and_then(|id| m.membership_config.membership().get_node(&id).cloned());
    let mut targets: Vec<PeerNode> = leader.into_iter().collect();
    if let Ok(l) = ledger.read() {
        for n in l.projection().nodes() {
            if n.role.is_authority() && n.status != crate::core::projection::NodeStatus::Left {
                if let Some(a) = n.addresses.first() {
                    targets.push(PeerNode { node: n.node, addr: a.to_string() });
                }
            }
        }
    }
    if let Some(g) = gossip {
        targets.extend(g.bootstrap_peers());
    }
    let mut tried: Vec<NodeId> = Vec::new();
    let mut queue: std::collections::VecDeque<PeerNode> = targets.into();
    while let Some(t) = queue.pop_front() {
        if tried.contains(&t.node) {
            continue;
        }
        tried.push(t.node);
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let call = async {
            if t.node == me.node {
                // This node leads: propose it here.
                let write = raft.client_write(crate::raft::SporeRequest::Provisional(p.clone()));
                return match tokio::time::timeout(left, write).await {
                    Ok(Ok(resp)) => Some(RpcResponse::Forward(Ok(resp.data))),
                    _ => None,
                };
            }
            transport.call(&t, RpcRequest::Provisional(p.clone()), left.min(rpc_timeout)).await.ok()
        };
        match call.await {
            Some(RpcResponse::Forward(Ok(resp))) => return Some(resp),
            Some(RpcResponse::Forward(Err(RemoteFailure::NotLeader { leader: Some(l) })))
                if !tried.contains(&l.node) =>
            {
                queue.push_front(l)
            }
            other => tracing::debug!(peer = %t.node.short(), ?other, "provisional event not taken"),
        }
    }
    None
}

/// How often held provisional events are offered to the Primary tier.
const PROVISIONAL_TICK: Duration = Duration::from_millis(500);

/// Most held provisional events offered per tick.
const PROVISIONAL_PER_TICK: usize = 16;

/// Offers the provisional events this node holds to the Primary tier (the leader proposes
/// them; a member forwards them to its leader; a latent node to the voters it knows) and
/// forgets each once the state machine answered for it (applied, already committed, or
/// refused for good). Also drops what can no longer be committed: a held event whose
/// statement fell out of the window a committer scans is re-issued by its author (after
/// checking its own chain) and dropped by everyone else.
pub(super) fn spawn_provisional_task(writer: ProvisionalWriter) -> tokio::task::JoinHandle<()> {
    let ProvisionalWriter { raft, transport, ledger, gossip, me, key, timeouts } = writer;
    let rpc_timeout = timeouts.rpc;
    let span = tracing::info_span!("provisional", node = %me.node.short());
    tokio::spawn(
        async move {
            loop {
                tokio::time::sleep(PROVISIONAL_TICK).await;
                let held = match ledger.read() {
                    Ok(l) => match crate::store::provisional::list(&l, crate::store::provisional::HELD_MAX) {
                        Ok(v) if v.is_empty() => continue,
                        Ok(v) => renew_or_drop(&l, &key, l.head().map(|h| h.seq), v),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read held provisional events");
                            continue;
                        }
                    },
                    Err(_) => return,
                };
                for p in held.into_iter().take(PROVISIONAL_PER_TICK) {
                    let answer = deliver_provisional(&raft, &transport, &ledger, gossip.as_deref(), &me, &p, rpc_timeout, rpc_timeout).await;
                    let Some(answer) = answer else {
                        // Nobody took it: the Primary tier is out of reach; try next tick.
                        break;
                    };
                    match &answer {
                        SporeResponse::Applied(pt) => tracing::info!(id = %p.id().short(), seq = pt.seq, "provisional event committed"),
                        SporeResponse::Rejected(Rejection::ProvisionalDuplicate(pt)) => {
                            tracing::info!(id = %p.id().short(), seq = pt.seq, "provisional event was already committed")
                        }
                        SporeResponse::Rejected(r) => tracing::warn!(id = %p.id().short(), reason = %r, "provisional event refused for good"),
                        other => tracing::warn!(id = %p.id().short(), ?other, "unexpected answer to a provisional event"),
                    }
                    let committed = matches!(answer, SporeResponse::Applied(_) | SporeResponse::Rejected(Rejection::ProvisionalDuplicate(_)));
                    if let (true, Some(g)) = (committed, &gossip) {
                        g.note_committed(p.id());
                    }
                    if let Ok(l) = ledger.read() {
                        if let Err(e) = crate::store::provisional::remove(&l, &p.id()) {
                            tracing::warn!(error = %e, "cannot forget a provisional event");
                        }
                    }
                }
            }
        }
        .instrument(span),
    )
}

/// Keeps the held events that can still be committed: one whose statement is older than the
/// committers' window is re-issued with a fresh statement if this node wrote it and its chain
/// does not hold it, dropped otherwise (its author re-issues it). Returns what to offer.
fn renew_or_drop(
    l: &crate::store::ledger::Ledger,
    key: &NodeKey,
    head: Option<u64>,
    held: Vec<ProvisionalEvent>,
) -> Vec<ProvisionalEvent> {
    let mut keep = Vec::with_capacity(held.len());
    for p in held {
        match p.scan_range(head) {
            Ok(_) => keep.push(p),
            Err(ProvisionalError::FromTheFuture(_)) => keep.push(p), // our chain lags; a committer decides
            Err(_) => {
                let id = p.id();
                let _ = crate::store::provisional::remove(l, &id);
                if p.event.author != key.node_id() {
                    tracing::info!(id = %id.short(), "dropping a provisional event too old to commit (its author re-issues it)");
                    continue;
                }
                // Ours: is it in our chain since the old statement? Then it is committed.
                let from = p.absent_through.map_or(0, |s| s + 1);
                let present = match head {
                    Some(h) if from <= h => match crate::store::provisional::find_committed(l, &p, from, h) {
                        Ok(found) => found.is_some(),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read the chain to renew a provisional event");
                            true
                        }
                    },
                    _ => false,
                };
                if present {
                    continue;
                }
                let renewed = ProvisionalEvent::new(key, p.event, head);
                match crate::store::provisional::put(l, &renewed) {
                    Ok(_) => {
                        tracing::info!(id = %id.short(), "renewed the statement of our provisional event");
                        keep.push(renewed);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot renew a provisional event"),
                }
            }
        }
    }
    keep
}
