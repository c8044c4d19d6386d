//! The leader's background duties: committing liveness transitions and checkpoint events
//! (anchors).

use openraft::async_runtime::WatchReceiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use super::AnchorPolicy;
use crate::core::event::{EventBody, SignedEvent};
use crate::core::keys::NodeKey;
use crate::core::types::{NodeId, Timestamp};
use crate::net::liveness::LivenessService;
use crate::raft::proposer::{AtHead, Proposer};
use crate::raft::state_machine::SharedLedger;
use crate::raft::{raft_id, Raft, SporeResponse};
use crate::store::ledger::Ledger;

/// On the leader, turns liveness *transitions* into events: a registered, active node that
/// SWIM declared down goes offline (with when it was last heard of), an offline node SWIM sees
/// up again comes back online. One event per transition, never one per heartbeat; a proposal
/// that loses a race (the node changed meanwhile) is rejected by the rules and looked at again
/// at the next tick.
pub(super) fn spawn_liveness_committer(
    raft: Raft,
    proposer: Proposer,
    ledger: SharedLedger,
    key: NodeKey,
    liveness: Arc<LivenessService>,
) -> tokio::task::JoinHandle<()> {
    let span = tracing::info_span!("liveness_committer", node = %key.node_id().short());
    tokio::spawn(
        async move {
            let me = key.node_id();
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if raft.metrics().borrow_watched().current_leader != Some(raft_id(&me)) {
                    continue;
                }
                let states = liveness.states();
                let todo: Vec<(NodeId, EventBody)> = {
                    let Ok(l) = ledger.read() else { return };
                    l.projection()
                        .nodes()
                        .filter(|n| n.node != me)
                        .filter_map(|n| {
                            let st = states.get(&n.node)?;
                            match (n.status, st.up) {
                                (crate::core::projection::NodeStatus::Active, false) => {
                                    let ago = st.since.elapsed().as_micros() as i64;
                                    let last_seen = Timestamp(Timestamp::now().0.saturating_sub(ago));
                                    Some((n.node, EventBody::NodeWentOffline { node: n.node, last_seen }))
                                }
                                (crate::core::projection::NodeStatus::Offline, true) => {
                                    Some((n.node, EventBody::NodeBackOnline { node: n.node }))
                                }
                                _ => None,
                            }
                        })
                        .collect()
                };
                for (node, body) in todo {
                    let Ok(fp) = ledger.read().map(|l| l.fingerprint()) else { return };
                    let Some(fp) = fp else { break };
                    let kind = body.kind();
                    let ev = SignedEvent::sign(&key, fp, Timestamp::now(), body);
                    match tokio::time::timeout(Duration::from_secs(5), proposer.propose(ev)).await {
                        Ok(Ok(SporeResponse::Applied(p))) => {
                            tracing::info!(peer = %node.short(), kind, seq = p.seq, "liveness transition committed")
                        }
                        other => {
                            tracing::debug!(peer = %node.short(), kind, ?other, "liveness transition not committed")
                        }
                    }
                }
            }
        }
        .instrument(span),
    )
}

/// On the leader, commits a checkpoint event (head seq and hash, signed by this voter) when
/// the policy says one is due: the anchors that give gossiped ranges Primary authority. A
/// checkpoint must name the head right before it, so it is proposed at the head
/// ([`Proposer::propose_at_head`]): made once no batch is in flight, from the ledger as it then
/// is, and committed before anything else. Proposed beside other writes it lost the race to
/// them on a busy leader, which then never attested its state (and retention never found a
/// state to prune to).
pub(super) fn spawn_anchor_task(
    raft: Raft,
    proposer: Proposer,
    ledger: SharedLedger,
    key: NodeKey,
    policy: AnchorPolicy,
) -> tokio::task::JoinHandle<()> {
    let span = tracing::info_span!("anchor_task", node = %key.node_id().short());
    tokio::spawn(
        async move {
            let tick = (policy.every / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
            let mut last_anchor_at = Instant::now();
            // Where this leader last attested the state (`None`: not since it started).
            let mut last_state_at: Option<u64> = None;
            loop {
                tokio::time::sleep(tick).await;
                let leader = { raft.metrics().borrow_watched().current_leader == Some(raft_id(&key.node_id())) };
                if !leader {
                    last_anchor_at = Instant::now();
                    continue;
                }
                let due = {
                    let Ok(l) = ledger.read() else { return };
                    let Some(head) = l.head() else { continue };
                    let since = head.seq - l.anchor().map_or(0, |a| a.seq);
                    let head_is_anchor = l.anchor().is_some_and(|a| a.seq == head.seq);
                    !head_is_anchor
                        && since > 0
                        && (since >= policy.every_events || last_anchor_at.elapsed() >= policy.every)
                };
                if !due {
                    continue;
                }
                let (key, spacing_min) = (key.clone(), policy.every_events);
                let make: AtHead = Box::new(move |l: &Ledger| {
                    let (head, fp) = (l.head()?, l.fingerprint()?);
                    if l.anchor().is_some_and(|a| a.seq == head.seq) {
                        return None;
                    }
                    // The leader attests only a state it has checked: its projection was checked
                    // against the chain on open and follows every applied event since; a
                    // replica in divergence proposes nothing. The digest costs O(registry) on
                    // every replica, so a state is attested at most every four registry sizes
                    // of events (amortized O(1) per event); the anchors between attest the head.
                    let p = l.projection();
                    if p.divergence().is_some() {
                        return None;
                    }
                    let registry = (p.state().nodes.len() + p.state().services.len()) as u64;
                    let spacing = spacing_min.max(registry.saturating_mul(4));
                    let body = if last_state_at.is_none_or(|s| head.seq.saturating_sub(s) >= spacing) {
                        EventBody::StateCheckpoint {
                            head_seq: head.seq,
                            head_hash: head.hash,
                            state_digest: p.state_digest(),
                        }
                    } else {
                        EventBody::Checkpoint { head_seq: head.seq, head_hash: head.hash }
                    };
                    Some(SignedEvent::sign(&key, fp, Timestamp::now(), body))
                });
                match tokio::time::timeout(Duration::from_secs(5), proposer.propose_at_head(make)).await {
                    Ok(Ok(Some(SporeResponse::Applied(p)))) => {
                        last_anchor_at = Instant::now();
                        // Which kind it was, from the ledger: the event just committed.
                        let attested = ledger
                            .read()
                            .ok()
                            .and_then(|l| l.get(p.seq).ok().flatten())
                            .is_some_and(|e| matches!(e.event.body, EventBody::StateCheckpoint { .. }));
                        if attested {
                            last_state_at = Some(p.seq.saturating_sub(1));
                        }
                        tracing::debug!(seq = p.seq, attested, "anchor committed");
                    }
                    Ok(Ok(None)) => {}
                    Ok(Ok(Some(other))) => tracing::debug!(?other, "anchor not committed; retrying later"),
                    Ok(Err(e)) => tracing::debug!(error = ?e, "anchor not proposed"),
                    Err(_) => tracing::debug!("anchor proposal timed out"),
                }
            }
        }
        .instrument(span),
    )
}
