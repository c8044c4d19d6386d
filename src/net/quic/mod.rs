//! The product transport: QUIC (quinn 0.11) with TLS 1.3 raw public keys (rustls 0.23, ring).
//!
//! This file holds the public surface: [`QuicBackend`] (binds an endpoint), its [`QuicConfig`],
//! the protocols and error codes. The rest, one job per file: `admission` (who may connect),
//! `endpoint` (socket, transport limits, reset key), `server` (accepting and serving),
//! `client` ([`QuicTransport`]: connection cache, calls, [`call_once`]), `append_lane`
//! (append streams), `framing` (length-prefixed frames), [`tls`] (raw public keys, verifiers)
//! and `socket` (a socket released on close).
//!
//! # Design
//!
//! * **One endpoint per node.** [`QuicBackend::bind`](NetworkBackend::bind) binds one UDP
//!   socket (`PeerNode.addr` as `host:port`, port 0 allowed) that serves incoming connections
//!   and dials outgoing ones. The returned [`Binding`] carries the actual bound address; closing
//!   it closes the endpoint, stops the server task and frees the port within
//!   [`QuicConfig::close_grace`], even while quinn still drains connections (`socket`).
//! * **Identity = the node key.** There are no certificates: each side presents its ed25519
//!   key as an RFC 7250 raw public key ([`tls`]). The caller pins the key it expects
//!   (`PeerNode.node`); the server requires a client key. Right after the handshake, when the
//!   protocol is known, a Raft connection from a key the [`AdmissionPolicy`] does not allow is
//!   closed with [`close_code::NOT_ADMITTED`] before any request is read, and logged with the
//!   key and remote address. The server hands the authenticated key to
//!   [`RpcHandler::handle`] as `from`.
//! * **ALPN per protocol.** [`ALPN_RAFT`] carries [`RpcRequest`]/[`RpcResponse`] between
//!   admitted nodes; [`ALPN_ADMIN`] carries only the read-only `Status` and `Query` requests,
//!   from any key (operator tools such as `spore status`, see [`admin_call`]). The endpoint
//!   serves the protocols in [`SERVED_ALPNS`] and refuses any other.
//! * **Append streams.** Replication to a follower runs on one bidirectional stream of its own
//!   (`append_lane`): an `AppendStream` frame opens it, then requests and answers flow as
//!   frames in order, pipelined, each request checked against the admission policy.
//! * **Framing.** One bidirectional stream per RPC; each direction carries one frame:
//!   `u32` big-endian length, then that many postcard bytes, at most [`FRAME_BYTES_MAX`]. An
//!   oversized, truncated or undecodable frame closes *that* connection with
//!   [`close_code::BAD_FRAME`]; other connections are unaffected.
//! * **Bounds.** Every call is bounded by the caller's timeout; the server bounds reading a
//!   request and writing a response, the handshake, the concurrent streams per connection
//!   and the number of incoming connections ([`QuicConfig`]). A caller that gives up stops
//!   its stream, which cancels the handler.
//! * **Deadlines that follow the link.** A call's timeout is a floor: the transport keeps a
//!   smoothed round-trip time per peer from completed calls and quinn's own estimate
//!   ([`super::rtt`]) and lets a call to a slow peer run longer. A dial runs in a task of its
//!   own, bounded by [`QuicConfig::handshake_deadline`], so a handshake slower than one call's
//!   deadline still completes for the next call.
//! * **Connection reuse.** One connection per peer key, re-dialed when it dies or the peer's
//!   address changes. The stateless-reset key and connection ids are derived so that a node
//!   restarted on the same address resets its previous incarnation's connections at once,
//!   instead of leaving peers to wait for the idle timeout.
//!
//! [`RpcRequest`]: crate::raft::RpcRequest
//! [`RpcResponse`]: crate::raft::RpcResponse

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::Endpoint;
use tracing::Instrument;

use self::admission::Gate;
use self::client::Shared;
use self::endpoint::{bind_err, bind_socket, resolve, transport_config, RandomCids, ResetKey};
use self::server::accept_loop;
use self::socket::ReleasableSocket;
use super::{Binding, BoxFuture, NetworkBackend, RpcHandler, SharedTransport, TransportError};
use crate::core::keys::NodeKey;
use crate::wire::rpc::PeerNode;

mod admin;
mod admission;
mod append_lane;
mod client;
mod endpoint;
mod framing;
mod server;
mod slots;
mod socket;
pub mod tls;

pub use admin::AdminClient;
pub use admission::{AdminReads, Admission, AdmissionPolicy};
pub use client::{admin_call, admin_call_as, call_once, client_config, QuicTransport};
pub use framing::{encode_frame, FRAME_BYTES_MAX};

/// ALPN of the Raft / client-forwarding protocol ([`RpcRequest`](crate::raft::RpcRequest) →
/// [`RpcResponse`](crate::raft::RpcResponse)).
pub const ALPN_RAFT: &[u8] = b"spores-raft/1";
/// Every protocol this endpoint serves. A connection negotiating anything else is refused
/// (gossip will add `spores-gossip/1` here, with its own serve loop).
pub const SERVED_ALPNS: &[&[u8]] = &[ALPN_RAFT, ALPN_ADMIN, super::gossip::ALPN_GOSSIP, super::liveness::ALPN_SWIM];
/// ALPN of the read-only operator protocol: `Status` and `Query` requests from any key.
pub const ALPN_ADMIN: &[u8] = b"spores-admin/1";

/// Application error codes used when closing a connection.
pub mod close_code {
    /// The endpoint is shutting down (or the connection is no longer needed).
    pub const SHUTDOWN: u32 = 0;
    /// A frame was oversized, truncated or undecodable.
    pub const BAD_FRAME: u32 = 1;
    /// The negotiated ALPN is not served here.
    pub const UNSUPPORTED_PROTOCOL: u32 = 2;
    /// The peer's identity could not be read from the TLS session.
    pub const NO_IDENTITY: u32 = 3;
    /// The peer's key is not admitted for this protocol, or it sent a request the protocol
    /// does not allow.
    pub const NOT_ADMITTED: u32 = 4;
}

/// Application error codes used when resetting or stopping a single stream.
pub mod stream_code {
    /// The caller gave up on the call (timeout or cancellation).
    pub const CANCELLED: u32 = 0x10;
    /// The request did not arrive within the server's read deadline.
    pub const READ_DEADLINE: u32 = 0x11;
    /// The response could not be framed (too large or unencodable).
    pub const RESPONSE_UNFRAMEABLE: u32 = 0x12;
    /// The response could not be written within the server's write deadline.
    pub const WRITE_DEADLINE: u32 = 0x13;
}

/// Limits and deadlines of a QUIC endpoint.
#[derive(Clone, Debug)]
pub struct QuicConfig {
    /// Most concurrent request streams a peer may have open on one connection.
    pub streams_per_connection: u32,
    /// Most incoming connections (handshaking or established) at once from anyone: clients,
    /// tools, and peers beyond the reserve.
    pub connections_max: usize,
    /// Incoming connections kept, beyond `connections_max`, for the peers this endpoint has
    /// dialed (at the address it dialed them): however many clients connect, the Raft members
    /// still reach each other.
    pub peer_connections_reserved: usize,
    /// A connection with no traffic for this long is dead.
    pub idle_timeout: Duration,
    /// Callers ping idle connections this often (keeps them alive and detects dead peers).
    pub keep_alive: Duration,
    /// Deadline of an incoming handshake.
    pub handshake_deadline: Duration,
    /// Deadline for a request frame to arrive once its stream is open.
    pub request_read_deadline: Duration,
    /// Deadline for writing a response frame.
    pub response_write_deadline: Duration,
    /// How long `bind` retries an address that is still in use (a node restarting in the same
    /// process on its previous port waits for the old endpoint to release its socket).
    pub bind_patience: Duration,
    /// How long a closed endpoint keeps its UDP socket so that its connections can send their
    /// close frames. The socket is released after this, or as soon as every connection has
    /// drained if that comes first — never later, however long quinn still drains a
    /// connection (a handshake that got no answer drains for about 3 s). Zero releases it
    /// when the binding is closed.
    pub close_grace: Duration,
    /// Who may read through the admin protocol ([`AdminReads::Open`] by default).
    pub admin_reads: AdminReads,
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            streams_per_connection: 64,
            connections_max: 256,
            peer_connections_reserved: 64,
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(2),
            handshake_deadline: Duration::from_secs(5),
            request_read_deadline: Duration::from_secs(10),
            response_write_deadline: Duration::from_secs(10),
            bind_patience: Duration::from_secs(5),
            close_grace: Duration::from_millis(250),
            admin_reads: AdminReads::Open,
        }
    }
}

/// The QUIC network: binds one endpoint per node, identified by its key.
#[derive(Clone)]
pub struct QuicBackend {
    key: NodeKey,
    admission: AdmissionPolicy,
    config: QuicConfig,
}

impl std::fmt::Debug for QuicBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicBackend").field("key", &self.key).field("config", &self.config).finish_non_exhaustive()
    }
}

impl QuicBackend {
    /// A backend for the node owning `key`, admitting incoming connections by `admission`
    /// (an [`Admission`] set or any [`AdmissionPolicy`]).
    pub fn new(key: NodeKey, admission: impl Into<AdmissionPolicy>) -> Self {
        QuicBackend { key, admission: admission.into(), config: QuicConfig::default() }
    }

    /// Replaces the limits and deadlines.
    pub fn with_config(mut self, config: QuicConfig) -> Self {
        self.config = config;
        self
    }

    /// Binds the endpoint at `addr` and serves `handler`; the lower-level form of
    /// [`NetworkBackend::bind`], returning the concrete transport.
    pub async fn bind_quic(
        &self,
        addr: &str,
        handler: Arc<dyn RpcHandler>,
    ) -> Result<(QuicTransport, Binding), TransportError> {
        let identity = Arc::new(tls::Identity::new(&self.key)?);
        super::addr::check_listen_addr(addr).map_err(|e| bind_err(addr, e.problem))?;
        let local = resolve(addr).await.map_err(|e| bind_err(addr, e))?;
        let socket = bind_socket(local, self.config.bind_patience).await.map_err(|e| bind_err(addr, e))?;

        let mut server = quinn::ServerConfig::with_crypto(Arc::new(identity.server_config(SERVED_ALPNS)?));
        server.transport_config(Arc::new(transport_config(&self.config, true)?));
        server.max_incoming((self.config.connections_max + self.config.peer_connections_reserved).max(1));
        server.migration(false);
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(ResetKey::derive(&self.key)));
        endpoint_config.cid_generator(|| Box::new(RandomCids));
        let runtime = quinn::default_runtime().ok_or_else(|| bind_err(addr, "no async runtime"))?;
        let socket = Arc::new(
            ReleasableSocket::new(runtime.wrap_udp_socket(socket).map_err(|e| bind_err(addr, e))?)
                .map_err(|e| bind_err(addr, e))?,
        );
        let endpoint = Endpoint::new_with_abstract_socket(endpoint_config, Some(server), socket.clone(), runtime)
            .map_err(|e| bind_err(addr, e))?;
        let local = endpoint.local_addr().map_err(|e| bind_err(addr, e))?;

        let shared = Arc::new(Shared {
            endpoint: endpoint.clone(),
            identity: identity.clone(),
            client_transport: Arc::new(transport_config(&self.config, false)?),
            peers: Mutex::new(HashMap::new()),
            swim: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            local,
            socket,
            close_grace: self.config.close_grace,
            dial_deadline: self.config.handshake_deadline,
            rtts: super::rtt::RttTable::default(),
            places: Arc::new(slots::Places::new(self.config.connections_max, self.config.peer_connections_reserved)),
        });
        let span = tracing::info_span!("quic_endpoint", node = %identity.me.short(), %local);
        let server_task = tokio::spawn(
            accept_loop(
                endpoint,
                handler,
                Arc::new(self.config.clone()),
                Gate { me: identity.me, admission: self.admission.clone() },
                shared.places.clone(),
            )
            .instrument(span),
        );
        tracing::info!(node = %identity.me.short(), %local, "QUIC endpoint bound");

        let transport = QuicTransport { shared: shared.clone() };
        let stop = server_task.abort_handle();
        let binding = Binding::new(Arc::new(transport.clone()) as SharedTransport, local.to_string(), move || {
            shared.close();
            stop.abort();
        });
        Ok((transport, binding))
    }
}

impl NetworkBackend for QuicBackend {
    fn bind(&self, me: &PeerNode, handler: Arc<dyn RpcHandler>) -> BoxFuture<'_, Result<Binding, TransportError>> {
        let me = me.clone();
        Box::pin(async move {
            if me.node != self.key.node_id() {
                return Err(TransportError::Refused {
                    peer: me.addr.clone(),
                    reason: format!(
                        "binding node {} with the key of node {}",
                        me.node.short(),
                        self.key.node_id().short()
                    ),
                });
            }
            self.bind_quic(&me.addr, handler).await.map(|(_, b)| b)
        })
    }

    fn check_address(&self, addr: &str) -> Result<(), super::addr::AddressError> {
        super::addr::check_peer_addr(addr)
    }
}
