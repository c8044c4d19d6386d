//! `spore member list|remove|promote|demote`: the Raft membership as an operator runs it.
//! `list` reads any node over the read-only admin protocol; the changes are signed in with an
//! admitted authority's key and follow the leader. A refusal (the last voter, a key that may
//! not) exits 1 with the reason, and nothing changed.

use std::path::Path;
use std::time::Duration;

use mycnet_spores::net::quic;
use mycnet_spores::node::{Member, Place};
use mycnet_spores::raft::{RpcRequest, RpcResponse};
use mycnet_spores::store::keyfile;
use mycnet_spores::wire::query::{Query, QueryAnswer};
use mycnet_spores::wire::rpc::RemoteFailure;
use mycnet_spores::{EventBody, NodeId, NodeStatus, Rejection, SporeStatus};
use serde_json::json;

use crate::output::{CliError, CliResult, Out};
use crate::service::{self, Written};

/// A membership change `spore member` asks for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Change {
    /// Out of the membership, and recorded as left.
    Remove,
    /// Learner to voter.
    Promote,
    /// Voter to learner.
    Demote,
}

/// `spore member list --addr`: every node of the registry with its place in the membership.
pub(crate) async fn list(addr: &str, timeout: Duration, o: &mut Out) -> CliResult {
    let (_, status) = crate::remote::admin(addr, None, RpcRequest::Status, timeout).await?;
    let st: SporeStatus = match status {
        RpcResponse::Status(Ok(st)) => st,
        other => return Err(CliError::Io(format!("{addr} did not report its status ({})", other.kind()))),
    };
    let (_, nodes) = crate::remote::admin(addr, None, RpcRequest::Query(Query::Nodes), timeout).await?;
    let nodes = match nodes {
        RpcResponse::Query(Ok(QueryAnswer::Nodes(n))) => n,
        other => return Err(CliError::Io(format!("{addr} did not list its nodes ({})", other.kind()))),
    };
    let members = Member::list(&nodes, &st.voters, &st.learners);
    let status = |m: &Member| m.status.map_or_else(|| "unknown".to_string(), |s| s.to_string());
    let place = |m: &Member| match m.place {
        Place::Voter => "voter",
        Place::Learner => "learner",
        Place::Outside => "outside",
    };
    if o.json {
        let list: Vec<_> = members
            .iter()
            .map(|m| {
                json!({ "node": m.node, "name": m.name, "membership": place(m), "status": status(m), "addresses": m.addresses })
            })
            .collect();
        return o.json_line(&json!({ "leader": st.leader, "members": list }));
    }
    o.line(format!("{:<12} {:<20} {:<8} {:<8} {}", "key", "name", "raft", "status", "addresses"))?;
    for m in &members {
        o.line(format!(
            "{:<12} {:<20} {:<8} {:<8} {}",
            m.node.short(),
            m.name,
            place(m),
            status(m),
            m.addresses.join(",")
        ))?;
    }
    Ok(())
}

/// `spore member remove|promote|demote NODE --addr --key-file`.
pub(crate) async fn change(
    key_file: &Path,
    addr: &str,
    node: NodeId,
    what: Change,
    reason: &str,
    timeout: Duration,
    o: &mut Out,
) -> CliResult {
    let key = keyfile::load(key_file).map_err(|e| CliError::Io(e.to_string()))?;
    let req = || match what {
        Change::Remove => RpcRequest::RemoveMember { node },
        Change::Promote => RpcRequest::SetVoter { node, voter: true },
        Change::Demote => RpcRequest::SetVoter { node, voter: false },
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut target = addr.to_string();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(1));
        match quic::call_once(&key, &target, None, quic::ALPN_RAFT, req(), left).await {
            Ok((_, RpcResponse::Membership(Ok(())))) => break,
            Ok((_, RpcResponse::Membership(Err(RemoteFailure::Membership(refusal))))) => {
                return Err(CliError::BadData(format!("refused: {refusal}; nothing changed")))
            }
            Ok((_, RpcResponse::Membership(Err(RemoteFailure::NotLeader { leader: Some(l) })))) => target = l.addr,
            Ok((_, RpcResponse::Membership(Err(e))))
                if !e.is_starting() && !matches!(e, RemoteFailure::NotLeader { .. }) =>
            {
                return Err(CliError::BadData(format!("refused: {e}; nothing changed")))
            }
            Ok((_, RpcResponse::Membership(Err(_)))) => {}
            Ok((_, other)) => return Err(CliError::Io(format!("{target} answered with {}", other.kind()))),
            Err(e @ mycnet_spores::net::TransportError::Refused { .. }) => {
                return Err(CliError::Io(format!("{e} (is the key in {} admitted?)", key_file.display())))
            }
            Err(e) => {
                tracing::debug!(error = %e, target = %target, "membership request failed; asking the given node again");
                target = addr.to_string();
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::Io(format!("no leader took the change within {timeout:?}")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A removed node is recorded as left in the registry too (its services go, its key is no
    // longer admitted), signed with the operator's key.
    let left_at = match what {
        Change::Remove if registered(addr, &node, timeout).await? => {
            let reason = reason.to_string();
            // A retry of the same signed event that finds the node gone was committed before.
            let landed_before = |r: &Rejection| matches!(r, Rejection::NodeLeft(n) if *n == node);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_secs(2));
            match service::submit(key_file, addr, |_| EventBody::NodeLeft { node, reason }, landed_before, left).await?
            {
                Written::Committed(p) => Some(p.seq),
                Written::Earlier | Written::Held(_) => None,
            }
        }
        // It left already (or was never admitted): the membership change is what was asked.
        Change::Remove | Change::Promote | Change::Demote => None,
    };
    let done = match what {
        Change::Remove => "removed",
        Change::Promote => "promoted to voter",
        Change::Demote => "demoted to learner",
    };
    if o.json {
        return o.json_line(&json!({ "node": node, "done": done, "left_seq": left_at }));
    }
    o.line(format!("{} {done}", node.short()))
}

/// Whether the registry of the node at `addr` holds `node` as admitted and not left.
async fn registered(addr: &str, node: &NodeId, timeout: Duration) -> Result<bool, CliError> {
    let (_, nodes) = crate::remote::admin(addr, None, RpcRequest::Query(Query::Nodes), timeout).await?;
    match nodes {
        RpcResponse::Query(Ok(QueryAnswer::Nodes(n))) => {
            Ok(n.iter().any(|r| &r.node == node && r.status != NodeStatus::Left))
        }
        other => Err(CliError::Io(format!("{addr} did not list its nodes ({})", other.kind()))),
    }
}
