//! Writes through a running node with an admitted key: `spore service register|deregister`
//! and the signed, retried submit they (and `spore member remove`) share; the parsers of the
//! values operators write on the command line.

use std::path::Path;
use std::time::Duration;

use mycnet_spores::net::quic;
use mycnet_spores::node;
use mycnet_spores::raft::{RpcRequest, RpcResponse, SporeResponse};
use mycnet_spores::store::keyfile;
use mycnet_spores::wire::rpc::RemoteFailure;
use mycnet_spores::{
    ChainPoint, Endpoint, EventBody, NodeId, ServiceAnnouncement, SignedEvent, SporeStatus, Timestamp,
};
use serde_json::json;

use crate::output::{CliError, CliResult, Out};
use crate::remote::kind_of;

/// Longest single attempt of a write (a commit takes milliseconds; an election about a second).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Signs `body` with the key in `key_file` for the network `addr` belongs to, and submits it
/// through that node (following the leader if it is not). Returns the committed point.
/// The key must be admitted: the node refuses Raft connections from any other.
///
/// An attempt that times out or loses its connection after sending may still have been
/// committed. If a later attempt of the same signed event is then rejected in a way that
/// `landed_before` recognises as "already applied" (e.g. `ServiceExists` for our fresh service
/// id), the write is reported as committed by the earlier attempt (`Ok(None)`). A timeout
/// after such an attempt says the outcome is unknown instead of "not committed".
pub(crate) async fn submit(
    key_file: &Path,
    addr: &str,
    body: impl FnOnce(NodeId) -> EventBody,
    landed_before: impl Fn(&mycnet_spores::Rejection) -> bool,
    timeout: Duration,
) -> Result<Written, CliError> {
    let key = keyfile::load(key_file).map_err(|e| CliError::Io(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(1));
    let (_, status) = crate::remote::admin(addr, None, RpcRequest::Status, left()).await?;
    let fingerprint = match status {
        RpcResponse::Status(Ok(SporeStatus { fingerprint: Some(f), .. })) => f,
        RpcResponse::Status(Ok(_)) => return Err(CliError::Io(format!("{addr} is not part of a formed network yet"))),
        other => return Err(CliError::Io(format!("{addr} did not report its status: {}", kind_of(&other)))),
    };
    let event = SignedEvent::sign(&key, fingerprint, Timestamp::now(), body(key.node_id()));
    let mut target = addr.to_string();
    let mut maybe_delivered = false;
    loop {
        // Short attempts: a leader named by a stale node may be the one that just died.
        let attempt = quic::call_once(
            &key,
            &target,
            None,
            quic::ALPN_RAFT,
            RpcRequest::Forward(event.clone()),
            left().min(ATTEMPT_TIMEOUT),
        )
        .await;
        match attempt {
            Ok((_, RpcResponse::Forward(Ok(SporeResponse::Applied(point))))) => return Ok(Written::Committed(point)),
            Ok((_, RpcResponse::Forward(Ok(SporeResponse::Rejected(r))))) if maybe_delivered && landed_before(&r) => {
                tracing::info!(reason = %r, "the retry was refused because an earlier attempt was committed");
                return Ok(Written::Earlier);
            }
            // A latent node that reached no voter keeps the write and hands it on by gossip.
            Ok((_, RpcResponse::Forward(Err(RemoteFailure::Provisional { id })))) => return Ok(Written::Held(id)),
            Ok((_, RpcResponse::Forward(Ok(SporeResponse::Rejected(r))))) => {
                return Err(CliError::BadData(format!("rejected: {r}")))
            }
            Ok((_, RpcResponse::Forward(Err(RemoteFailure::NotLeader { leader: Some(l) })))) => target = l.addr,
            Ok((_, RpcResponse::Forward(Err(RemoteFailure::NotLeader { leader: None })))) => {}
            Ok((_, RpcResponse::Forward(Err(RemoteFailure::Other(e))))) => {
                tracing::debug!(error = %e, "write not taken yet")
            }
            Ok((_, other)) => return Err(CliError::Io(format!("{target} answered with {}", kind_of(&other)))),
            Err(e @ mycnet_spores::net::TransportError::Refused { .. }) => {
                return Err(CliError::Io(format!("{e} (is the key in {} admitted?)", key_file.display())))
            }
            Err(e) => {
                // Unless the peer was unreachable, the request may have arrived.
                maybe_delivered |= !matches!(e, mycnet_spores::net::TransportError::Unreachable(_));
                tracing::debug!(error = %e, target = %target, "write attempt failed; asking the given node again");
                target = addr.to_string();
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::Io(if maybe_delivered {
                format!("no leader confirmed the write within {timeout:?}; an attempt may still have been committed (check with `spore query`)")
            } else {
                format!("no leader took the write within {timeout:?}; it was not committed")
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What became of a write [`submit`] handed to a node.
pub(crate) enum Written {
    /// Committed at this point of the chain.
    Committed(ChainPoint),
    /// Committed by an earlier attempt whose answer was lost.
    Earlier,
    /// Held by the latent node it was sent to, as a provisional event, until a voter is
    /// reachable (it travels by gossip and is committed once).
    Held(mycnet_spores::core::provisional::EventId),
}

/// A node key as operators write it: 64 hex characters.
pub(crate) fn parse_node_id(s: &str) -> Result<NodeId, String> {
    node::parse_node_key("node", s).map_err(|e| e.to_string())
}

/// A trust score as operators write it: a fraction from 0.0 to 1.0 (thousandths kept).
pub(crate) fn parse_trust(s: &str) -> Result<mycnet_spores::TrustScore, String> {
    // The HTTP endpoint's `min_trust` reads it the same way.
    mycnet_spores::http::params::parse_trust(s).map_err(|e| e.to_string())
}

/// Parses `proto://host:port` into an endpoint.
pub(crate) fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    let (protocol, address) = s.split_once("://").ok_or_else(|| format!("{s}: expected PROTOCOL://ADDRESS"))?;
    Ok(Endpoint { protocol: protocol.to_string().into(), address: address.to_string().into() })
}

/// Parses `key=value`.
pub(crate) fn parse_meta(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s}: expected KEY=VALUE"))
}

/// A health check as `--check` takes it (`core::health::CheckSpec`'s text form).
pub(crate) fn parse_check(s: &str) -> Result<mycnet_spores::core::health::CheckSpec, String> {
    mycnet_spores::core::health::CheckSpec::parse(s).map_err(|e| e.to_string())
}

/// `spore service register`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn register_service(
    key_file: &Path,
    addr: &str,
    name: String,
    endpoints: Vec<Endpoint>,
    capabilities: Vec<String>,
    metadata: Vec<(String, String)>,
    timeout: Duration,
    o: &mut Out,
) -> CliResult {
    // Time-ordered, as the library's own registrations (`SporeSystem::register_service`).
    let service_id = uuid::Uuid::now_v7();
    let point = submit(
        key_file,
        addr,
        |node| {
            EventBody::ServiceRegistered(ServiceAnnouncement {
                service_id,
                name: name.into(),
                node,
                capabilities: capabilities.into_iter().map(Into::into).collect(),
                endpoints: endpoints.into(),
                metadata: metadata.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            })
        },
        // The id is fresh and random: only our own earlier attempt can have registered it.
        |r| matches!(r, mycnet_spores::Rejection::ServiceExists(id) if *id == service_id),
        timeout,
    )
    .await?;
    report_write(o, "registered", service_id, point)
}

fn report_write(o: &mut Out, done: &str, service_id: uuid::Uuid, written: Written) -> CliResult {
    match (written, o.json) {
        (Written::Committed(p), true) => o.json_line(&json!({ "service_id": service_id, "seq": p.seq, "hash": p.hash })),
        (Written::Earlier, true) => o.json_line(&json!({ "service_id": service_id, "seq": null, "committed_by": "an earlier attempt" })),
        (Written::Held(id), true) => o.json_line(&json!({ "service_id": service_id, "seq": null, "provisional": id.to_string() })),
        (Written::Committed(p), false) => o.line(format!("{done} {service_id} at seq {} ({})", p.seq, p.hash.short())),
        (Written::Earlier, false) => o.line(format!("{done} {service_id} (committed by an earlier attempt whose answer was lost)")),
        (Written::Held(id), false) => o.line(format!(
            "{done} {service_id}: held as provisional event {} by the latent node (no voter reachable); it is committed once one is",
            id.short()
        )),
    }
}

/// `spore service deregister`.
pub(crate) async fn deregister_service(
    key_file: &Path,
    addr: &str,
    service_id: uuid::Uuid,
    reason: String,
    timeout: Duration,
    o: &mut Out,
) -> CliResult {
    let point = submit(
        key_file,
        addr,
        |_| EventBody::ServiceDeregistered { service_id, reason },
        // After an attempt that may have landed, "unknown service" means it did.
        |r| matches!(r, mycnet_spores::Rejection::UnknownService(id) if *id == service_id),
        timeout,
    )
    .await?;
    report_write(o, "deregistered", service_id, point)
}
