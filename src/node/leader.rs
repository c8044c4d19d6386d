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
use crate::raft::proposer::Proposer;
use crate::raft::state_machine::SharedLedger;
use crate::raft::{raft_id, Raft, SporeResponse};

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
/// checkpoint that loses a race with other writes is rejected (it must name the head just
/// before it) and retried at the next tick.
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
                    let (Some(head), Some(fp)) = (l.head(), l.fingerprint()) else { continue };
                    let since = head.seq - l.anchor().map_or(0, |a| a.seq);
                    let head_is_anchor = l.anchor().is_some_and(|a| a.seq == head.seq);
                    let due = !head_is_anchor
                        && since > 0
                        && (since >= policy.every_events || last_anchor_at.elapsed() >= policy.every);
                    // The leader attests only a state it has checked: its projection was checked
                    // against the chain on open and follows every applied event since; a
                    // replica in divergence proposes nothing. The digest costs O(registry) on
                    // every replica, so a state is attested at most every four registry sizes
                    // of events (amortized O(1) per event); the anchors between attest the head.
                    let p = l.projection();
                    let registry = (p.state().nodes.len() + p.state().services.len()) as u64;
                    let spacing = policy.every_events.max(registry.saturating_mul(4));
                    let attest = last_state_at.is_none_or(|s| head.seq.saturating_sub(s) >= spacing);
                    (due && p.divergence().is_none()).then(|| (head, fp, attest.then(|| p.state_digest())))
                };
                let Some((head, fp, state_digest)) = due else { continue };
                let body = match state_digest {
                    Some(state_digest) => {
                        EventBody::StateCheckpoint { head_seq: head.seq, head_hash: head.hash, state_digest }
                    }
                    None => EventBody::Checkpoint { head_seq: head.seq, head_hash: head.hash },
                };
                let attested = matches!(body, EventBody::StateCheckpoint { .. });
                let ev = SignedEvent::sign(&key, fp, Timestamp::now(), body);
                match tokio::time::timeout(Duration::from_secs(5), proposer.propose(ev)).await {
                    Ok(Ok(SporeResponse::Applied(p))) => {
                        last_anchor_at = Instant::now();
                        if attested {
                            last_state_at = Some(head.seq);
                        }
                        tracing::debug!(seq = p.seq, attested, "anchor committed");
                    }
                    Ok(Ok(other)) => tracing::debug!(?other, "anchor not committed; retrying later"),
                    Ok(Err(e)) => tracing::debug!(error = ?e, "anchor not proposed"),
                    Err(_) => tracing::debug!("anchor proposal timed out"),
                }
            }
        }
        .instrument(span),
    )
}
