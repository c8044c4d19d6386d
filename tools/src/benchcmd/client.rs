//! One `spore bench` client: where the writes go and as whom ([`Target`]), and a kept
//! connection that follows the leader and retries a write until it commits or its time is up
//! ([`Client`]).

use std::path::Path;
use std::time::{Duration, Instant};

use mycnet_spores::net::quic::{self, AdminClient};
use mycnet_spores::net::TransportError;
use mycnet_spores::raft::{RpcRequest, RpcResponse, SporeResponse};
use mycnet_spores::store::keyfile;
use mycnet_spores::wire::query::{Query, QueryAnswer};
use mycnet_spores::wire::rpc::RemoteFailure;
use mycnet_spores::{NetworkFingerprint, NodeKey, NodeStatus, Rejection, SignedEvent, SporeStatus};

use crate::output::CliError;
use crate::remote::kind_of;

/// Longest single attempt of a write (a commit takes milliseconds; an election about a second).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before a write is tried again (no leader yet, a connection lost).
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Where the writes go, and as whom.
#[derive(Clone)]
pub(super) struct Target {
    pub(super) key: NodeKey,
    pub(super) fingerprint: NetworkFingerprint,
    /// The given address.
    given: String,
    /// The leader's address if the given node knew it, else the given one.
    pub(super) first: String,
}

impl Target {
    /// Loads the key, asks the node at `addr` for the network and its leader, and checks that
    /// the key's node is admitted there: a usage error (exit 2) otherwise, saying which.
    pub(super) async fn find(addr: &str, key_file: &Path, timeout: Duration) -> Result<Target, CliError> {
        let key = keyfile::load(key_file)
            .map_err(|e| CliError::usage(format!("--key-file {}: not a node key file: {e}", key_file.display())))?;
        // Read as the `--client-key-file` key if one was given, else as the node itself (its
        // key is admitted, which a node that narrows its admin reads may ask for).
        let reader = crate::remote::client_key().unwrap_or_else(|| key.clone());
        let status = match quic::admin_call_as(&reader, addr, None, RpcRequest::Status, timeout).await {
            Ok((_, RpcResponse::Status(Ok(st)))) => st,
            Ok((_, other)) => {
                return Err(CliError::Io(format!("{addr} did not report its status: {}", kind_of(&other))))
            }
            Err(e) => return Err(CliError::Io(e.to_string())),
        };
        let Some(fingerprint) = status.fingerprint else {
            return Err(CliError::Io(format!("{addr} is not part of a formed network yet")));
        };
        let nodes = match quic::admin_call_as(&reader, addr, None, RpcRequest::Query(Query::Nodes), timeout).await {
            Ok((_, RpcResponse::Query(Ok(QueryAnswer::Nodes(n))))) => n,
            Ok((_, other)) => return Err(CliError::Io(format!("{addr} did not list its nodes: {}", kind_of(&other)))),
            Err(e) => return Err(CliError::Io(e.to_string())),
        };
        let me = key.node_id();
        if !nodes.iter().any(|n| n.node == me && n.status != NodeStatus::Left) {
            return Err(CliError::usage(format!(
                "the key in {} is node {me}, which the network at {addr} has not admitted (or which left it): \
                 spore bench signs with an admitted node's key, e.g. a voter's DATA_DIR/node.key",
                key_file.display()
            )));
        }
        let first = leader_addr(&status).unwrap_or_else(|| addr.to_string());
        Ok(Target { key, fingerprint, given: addr.to_string(), first })
    }
}

/// The leader's address as `status` names it.
fn leader_addr(status: &SporeStatus) -> Option<String> {
    let leader = status.leader?;
    if leader == status.node {
        return Some(status.addr.clone());
    }
    status.peers.iter().find(|p| p.node == leader).map(|p| p.addr.clone())
}

/// One client's connection, following the leader.
pub(super) struct Client {
    pub(super) key: NodeKey,
    pub(super) fingerprint: NetworkFingerprint,
    given: String,
    target: String,
    pub(super) conn: AdminClient,
}

/// Why a write did not commit.
pub(super) enum WriteFailure {
    /// Not within the write timeout: the network may take it later; the bench goes on.
    Gave(String),
    /// No retry can fix it: the bench stops.
    Fatal(String),
}

impl Client {
    pub(super) fn new(target: &Target) -> Self {
        Client {
            key: target.key.clone(),
            fingerprint: target.fingerprint,
            given: target.given.clone(),
            target: target.first.clone(),
            conn: AdminClient::as_member(target.first.clone(), target.key.clone()),
        }
    }

    /// Connects to the first target ahead of the writes, so the first write's time is a
    /// write's. Returns how long the handshake took.
    pub(super) async fn connect(&mut self, timeout: Duration) -> Result<Duration, TransportError> {
        let started = Instant::now();
        self.conn.open(timeout).await?;
        Ok(started.elapsed())
    }

    fn retarget(&mut self, addr: String) {
        if addr != self.target {
            self.conn = AdminClient::as_member(addr.clone(), self.key.clone());
            self.target = addr;
        }
    }

    /// Submits `event` until it commits, following the leader, within `timeout`. A retry of a
    /// write whose answer was lost may be refused in the way `landed_before` recognises as
    /// "already applied": that counts as committed.
    pub(super) async fn write(
        &mut self,
        event: &SignedEvent,
        landed_before: impl Fn(&Rejection) -> bool,
        timeout: Duration,
    ) -> Result<(), WriteFailure> {
        let deadline = Instant::now() + timeout;
        let mut maybe_delivered = false;
        // The last failed attempt's error, for the report if the write gives up.
        let mut last_error: Option<String> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            match self.conn.call(RpcRequest::Forward(event.clone()), left.min(ATTEMPT_TIMEOUT)).await {
                Ok((_, RpcResponse::Forward(Ok(SporeResponse::Applied(_))))) => return Ok(()),
                Ok((_, RpcResponse::Forward(Ok(SporeResponse::Rejected(r)))))
                    if maybe_delivered && landed_before(&r) =>
                {
                    return Ok(())
                }
                Ok((_, RpcResponse::Forward(Ok(SporeResponse::Rejected(r))))) => {
                    return Err(WriteFailure::Fatal(format!("a write was rejected: {r}")))
                }
                Ok((_, RpcResponse::Forward(Err(RemoteFailure::NotLeader { leader: Some(l) })))) => {
                    self.retarget(l.addr)
                }
                Ok((_, RpcResponse::Forward(Err(RemoteFailure::Provisional { .. })))) => {
                    return Err(WriteFailure::Fatal(format!(
                        "{} is a latent node that reaches no voter: it holds writes as provisional; bench a voter",
                        self.target
                    )))
                }
                Ok((_, RpcResponse::Forward(Err(e)))) => last_error = Some(e.to_string()),
                Ok((_, other)) => {
                    return Err(WriteFailure::Fatal(format!("{} answered with {}", self.target, kind_of(&other))))
                }
                Err(e @ TransportError::Refused { .. }) => {
                    return Err(WriteFailure::Fatal(format!("{e} (is the key admitted?)")))
                }
                Err(e) => {
                    // Unless the peer was unreachable, the request may have arrived.
                    maybe_delivered |= !matches!(e, TransportError::Unreachable(_));
                    // A timeout says less than what came before it (the last attempt has what
                    // is left of the deadline).
                    if last_error.is_none() || !matches!(e, TransportError::Timeout { .. }) {
                        last_error = Some(e.to_string());
                    }
                    tracing::debug!(error = %e, target = %self.target, "write attempt failed; asking the given node again");
                    let given = self.given.clone();
                    self.retarget(given);
                }
            }
            if Instant::now() >= deadline {
                return Err(WriteFailure::Gave(format!(
                    "no leader confirmed a write within {timeout:?}{}{}",
                    last_error.map(|e| format!("; last attempt: {e}")).unwrap_or_default(),
                    if maybe_delivered { " (it may still commit)" } else { "" }
                )));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}
