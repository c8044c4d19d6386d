//! The product transport: QUIC (quinn 0.11) with TLS 1.3 raw public keys (rustls 0.23, ring).
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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use quinn::{ConnectionError, Endpoint, Incoming, ReadError, RecvStream, SendStream, VarInt, WriteError};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use self::socket::ReleasableSocket;

use super::{Binding, BoxFuture, NetworkBackend, RpcHandler, SharedTransport, Transport, TransportError};

use crate::core::keys::NodeKey;
use crate::core::limits::RECORD_BYTES_MAX;
use crate::core::types::NodeId;
use crate::raft::{RpcRequest, RpcResponse};
use crate::wire::rpc::PeerNode;

mod socket;
pub mod tls;

/// ALPN of the Raft / client-forwarding protocol ([`RpcRequest`] → [`RpcResponse`]).
pub const ALPN_RAFT: &[u8] = b"spores-raft/1";
/// Every protocol this endpoint serves. A connection negotiating anything else is refused
/// (gossip will add `spores-gossip/1` here, with its own serve loop).
pub const SERVED_ALPNS: &[&[u8]] = &[ALPN_RAFT, ALPN_ADMIN, super::gossip::ALPN_GOSSIP, super::liveness::ALPN_SWIM];
/// ALPN of the read-only operator protocol: `Status` and `Query` requests from any key.
pub const ALPN_ADMIN: &[u8] = b"spores-admin/1";

/// Largest frame payload (the postcard bytes after the length prefix), in bytes.
pub const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;
// A frame holds at least 64 worst-case ledger records (a replication or snapshot chunk), and
// its length fits the u32 prefix.
const _: () = assert!(FRAME_BYTES_MAX >= 64 * RECORD_BYTES_MAX);
const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);
// A full AppendEntries request (the proposer bounds batches by bytes) must fit one frame.
const _: () = assert!(crate::raft::proposer::APPEND_ENTRIES_BYTES_MAX < FRAME_BYTES_MAX);

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

/// The TLS server name sent by callers (identity is the pinned key, not the name).
const SERVER_NAME: &str = "spores";
/// Connection-level receive window (bounds buffered data per connection).
const RECEIVE_WINDOW: u32 = 32 * 1024 * 1024;
/// Stream-level receive window.
const STREAM_RECEIVE_WINDOW: u32 = 4 * 1024 * 1024;
/// Initial buffer for reading a frame; it grows with data actually received, so a length
/// prefix alone never makes us allocate.
const FRAME_READ_CHUNK: usize = 64 * 1024;
/// Datagrams buffered per server connection before the oldest are dropped.
const DATAGRAM_BUFFER_BYTES: usize = 64 * 1024;
/// Prune the per-peer connection table beyond this many entries.
const PEER_TABLE_PRUNE_AT: usize = 1024;

/// Decides whether a node key may connect to this endpoint.
pub type AdmissionPolicy = Arc<dyn Fn(&NodeId) -> bool + Send + Sync>;

/// A ready [`AdmissionPolicy`]: a shared, updatable set of admitted node keys (or everyone).
///
/// Clones share the set, so the owner can keep one clone and feed admitted registry keys into
/// it while the endpoint checks every new connection against the current contents.
#[derive(Clone, Default)]
pub struct Admission {
    inner: Arc<RwLock<AdmissionSet>>,
}

#[derive(Default)]
struct AdmissionSet {
    everyone: bool,
    keys: std::collections::HashSet<NodeId>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.read();
        f.debug_struct("Admission").field("everyone", &g.everyone).field("keys", &g.keys.len()).finish()
    }
}

impl Admission {
    /// Admits every key (tests, or a network that authorizes at a higher layer).
    pub fn allow_all() -> Self {
        let a = Admission::default();
        a.write().everyone = true;
        a
    }

    /// Admits exactly `keys` (plus any added later).
    pub fn only(keys: impl IntoIterator<Item = NodeId>) -> Self {
        let a = Admission::default();
        a.write().keys.extend(keys);
        a
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, AdmissionSet> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, AdmissionSet> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits `key`.
    pub fn allow(&self, key: NodeId) {
        self.write().keys.insert(key);
    }

    /// Stops admitting `key`: new connections are refused, and an established one is closed
    /// at its next request.
    pub fn revoke(&self, key: &NodeId) {
        self.write().keys.remove(key);
    }

    /// Replaces the admitted set with `keys`.
    pub fn replace(&self, keys: impl IntoIterator<Item = NodeId>) {
        let mut g = self.write();
        g.keys = keys.into_iter().collect();
    }

    /// Whether `key` may connect now.
    pub fn is_admitted(&self, key: &NodeId) -> bool {
        let g = self.read();
        g.everyone || g.keys.contains(key)
    }

    /// This set as a policy function.
    pub fn policy(&self) -> AdmissionPolicy {
        let a = self.clone();
        Arc::new(move |k: &NodeId| a.is_admitted(k))
    }
}

impl From<Admission> for AdmissionPolicy {
    fn from(a: Admission) -> Self {
        a.policy()
    }
}

/// Limits and deadlines of a QUIC endpoint.
#[derive(Clone, Debug)]
pub struct QuicConfig {
    /// Most concurrent request streams a peer may have open on one connection.
    pub streams_per_connection: u32,
    /// Most incoming connections (handshaking or established) at once.
    pub connections_max: usize,
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
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            streams_per_connection: 64,
            connections_max: 256,
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(2),
            handshake_deadline: Duration::from_secs(5),
            request_read_deadline: Duration::from_secs(10),
            response_write_deadline: Duration::from_secs(10),
            bind_patience: Duration::from_secs(5),
            close_grace: Duration::from_millis(250),
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
        server.max_incoming(self.config.connections_max.max(1));
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
        });
        let span = tracing::info_span!("quic_endpoint", node = %identity.me.short(), %local);
        let server_task = tokio::spawn(
            accept_loop(
                endpoint,
                handler,
                Arc::new(self.config.clone()),
                Gate { me: identity.me, admission: self.admission.clone() },
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

/// A quinn client config that presents `key` and accepts only a server holding `expected`,
/// negotiating `alpn` — for tools and tests that speak the protocol directly.
pub fn client_config(key: &NodeKey, expected: NodeId, alpn: &[u8]) -> Result<quinn::ClientConfig, TransportError> {
    let identity = tls::Identity::new(key)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(identity.client_config(Some(expected), alpn)?));
    cfg.transport_config(Arc::new(transport_config(&QuicConfig::default(), false)?));
    Ok(cfg)
}

/// Encodes `value` as one frame: `u32` big-endian payload length, then the postcard bytes.
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    let buf = postcard::to_extend(value, vec![0u8; 4]).map_err(|e| format!("cannot encode: {e}"))?;
    let n = buf.len() - 4;
    if n > FRAME_BYTES_MAX {
        return Err(format!("frame of {n} bytes exceeds the {FRAME_BYTES_MAX}-byte limit"));
    }
    let mut buf = buf;
    buf[..4].copy_from_slice(&(n as u32).to_be_bytes());
    Ok(buf)
}

fn bind_err(addr: &str, e: impl std::fmt::Display) -> TransportError {
    TransportError::Bind { addr: addr.to_string(), cause: os_cause(&e.to_string()) }
}

/// An OS message as the end of a sentence: "Address already in use (os error 98)" reads
/// "address already in use (os error 98)".
fn os_cause(message: &str) -> String {
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "unknown cause".into(),
    }
}

async fn resolve(addr: &str) -> std::io::Result<SocketAddr> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{addr} resolves to no address")))
}

async fn bind_socket(addr: SocketAddr, patience: Duration) -> std::io::Result<std::net::UdpSocket> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match std::net::UdpSocket::bind(addr) {
            Ok(s) => return Ok(s),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && addr.port() != 0
                    && tokio::time::Instant::now() < deadline =>
            {
                tracing::debug!(%addr, "address still in use; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn transport_config(cfg: &QuicConfig, server: bool) -> Result<quinn::TransportConfig, TransportError> {
    let mut t = quinn::TransportConfig::default();
    // Callers accept no streams from the server; servers accept a bounded number.
    let streams = if server { cfg.streams_per_connection } else { 0 };
    t.max_concurrent_bidi_streams(VarInt::from_u32(streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    let idle = quinn::IdleTimeout::try_from(cfg.idle_timeout).map_err(|e| TransportError::Refused {
        peer: "local QUIC setup".into(),
        reason: format!("idle timeout: {e}"),
    })?;
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(if server { None } else { Some(cfg.keep_alive) });
    t.receive_window(VarInt::from_u32(RECEIVE_WINDOW));
    t.stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW));
    // SWIM datagrams (read only on `spores-swim/1` connections, by the server). The buffer is
    // bounded and drops the oldest when full; quinn also requires it on the sending side.
    t.datagram_receive_buffer_size(Some(DATAGRAM_BUFFER_BYTES));
    Ok(t)
}

/// The stateless-reset key, derived from the node key so that a restarted node can reset the
/// connections of its previous incarnation (peers then re-dial at once).
struct ResetKey([u8; 32]);

impl ResetKey {
    fn derive(key: &NodeKey) -> Self {
        ResetKey(blake3::derive_key("mycnet-spores quic stateless-reset key v1", &key.to_seed()))
    }
}

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let mac = blake3::keyed_hash(&self.0, data);
        let n = signature_out.len().min(32);
        signature_out[..n].copy_from_slice(&mac.as_bytes()[..n]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        let Ok(sig) = <[u8; 32]>::try_from(signature) else { return Err(quinn::crypto::CryptoError) };
        // blake3::Hash compares in constant time.
        if blake3::keyed_hash(&self.0, data) == blake3::Hash::from(sig) {
            Ok(())
        } else {
            Err(quinn::crypto::CryptoError)
        }
    }
}

/// Random 8-byte connection ids that every incarnation of the endpoint accepts as "possibly
/// ours" (quinn's default hashes them with a per-process key, so a restarted endpoint would
/// silently drop its predecessor's packets instead of answering with a stateless reset).
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&rand::random::<[u8; 8]>())
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The node id the peer of `conn` authenticated with.
fn peer_node_id(conn: &quinn::Connection) -> Option<NodeId> {
    let chain = conn.peer_identity()?.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    tls::node_id_from_chain(&chain)
}

/// The ALPN negotiated on `conn`.
fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?.downcast::<quinn::crypto::rustls::HandshakeData>().ok()?.protocol
}

fn close(conn: &quinn::Connection, code: u32, reason: &str) {
    conn.close(VarInt::from_u32(code), reason.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// Framing

#[derive(Debug)]
enum FrameError {
    /// The length prefix exceeds [`FRAME_BYTES_MAX`].
    TooLarge(usize),
    /// The stream ended inside the frame.
    Truncated { got: usize, want: usize },
    /// The stream or connection failed.
    Stream(ReadError),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge(n) => write!(f, "frame of {n} bytes exceeds the {FRAME_BYTES_MAX}-byte limit"),
            FrameError::Truncated { got, want } => write!(f, "stream ended after {got} of {want} bytes"),
            FrameError::Stream(e) => write!(f, "{e}"),
        }
    }
}

async fn read_frame(recv: &mut RecvStream) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(got) => FrameError::Truncated { got, want: 4 },
        quinn::ReadExactError::ReadError(e) => FrameError::Stream(e),
    })?;
    let want = u32::from_be_bytes(len) as usize;
    if want > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge(want));
    }
    let mut buf = Vec::with_capacity(want.min(FRAME_READ_CHUNK));
    while buf.len() < want {
        match recv.read_chunk(want - buf.len(), true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) => return Err(FrameError::Truncated { got: buf.len(), want }),
            Err(e) => return Err(FrameError::Stream(e)),
        }
    }
    Ok(buf)
}

// ---------------------------------------------------------------------------------------------
// Server side

/// Who may use the Raft protocol on this endpoint: this node itself and admitted keys.
#[derive(Clone)]
struct Gate {
    me: NodeId,
    admission: AdmissionPolicy,
}

impl Gate {
    fn admits(&self, key: &NodeId) -> bool {
        *key == self.me || (self.admission)(key)
    }
}

async fn accept_loop(endpoint: Endpoint, handler: Arc<dyn RpcHandler>, cfg: Arc<QuicConfig>, gate: Gate) {
    let permits = Arc::new(Semaphore::new(cfg.connections_max));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let remote = incoming.remote_address();
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::warn!(%remote, limit = cfg.connections_max, "incoming connection limit reached; refusing");
                    incoming.refuse();
                    continue;
                };
                let span = tracing::info_span!("quic_accept", %remote, peer = tracing::field::Empty);
                connections.spawn(serve_connection(incoming, handler.clone(), cfg.clone(), gate.clone(), permit).instrument(span));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    tracing::debug!("endpoint closed; server stopped");
    // Dropping the set aborts what is left of the connection tasks.
}

async fn serve_connection(
    incoming: Incoming,
    handler: Arc<dyn RpcHandler>,
    cfg: Arc<QuicConfig>,
    gate: Gate,
    _permit: OwnedSemaphorePermit,
) {
    // `accept` inside this span: quinn runs the connection (and our TLS verifier, which logs
    // refused keys) in the span current here, so those logs carry the remote address.
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "could not accept");
            return;
        }
    };
    let conn = match tokio::time::timeout(cfg.handshake_deadline, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(deadline = ?cfg.handshake_deadline, "handshake deadline passed");
            return;
        }
    };
    let Some(peer) = peer_node_id(&conn) else {
        tracing::warn!("no peer key in an established session; closing");
        close(&conn, close_code::NO_IDENTITY, "no peer identity");
        return;
    };
    tracing::Span::current().record("peer", tracing::field::display(peer.short()));
    match negotiated_alpn(&conn).as_deref() {
        Some(ALPN_RAFT) if !gate.admits(&peer) => {
            tracing::warn!(peer_key = %peer, "refused a Raft connection from a node key the admission policy does not allow");
            close(&conn, close_code::NOT_ADMITTED, "node key not admitted");
        }
        Some(ALPN_RAFT) => serve_rpc(conn, peer, handler, cfg, Some(gate)).await,
        Some(ALPN_ADMIN) => serve_rpc(conn, peer, handler, cfg, None).await,
        Some(super::gossip::ALPN_GOSSIP) if !gate.admits(&peer) => {
            tracing::warn!(peer_key = %peer, "refused a gossip connection from a node key the admission policy does not allow");
            close(&conn, close_code::NOT_ADMITTED, "node key not admitted");
        }
        Some(super::liveness::ALPN_SWIM) if !gate.admits(&peer) => {
            tracing::warn!(peer_key = %peer, "refused a SWIM connection from a node key the admission policy does not allow");
            close(&conn, close_code::NOT_ADMITTED, "node key not admitted");
        }
        Some(super::liveness::ALPN_SWIM) => match handler.liveness() {
            Some(sink) => loop {
                match conn.read_datagram().await {
                    Ok(_) if !gate.admits(&peer) => {
                        close(&conn, close_code::NOT_ADMITTED, "node key no longer admitted");
                        break;
                    }
                    Ok(d) => sink.datagram(peer, d),
                    Err(e) => {
                        tracing::debug!(reason = %e, "SWIM connection ended");
                        break;
                    }
                }
            },
            None => close(&conn, close_code::UNSUPPORTED_PROTOCOL, "liveness not served"),
        },
        Some(super::gossip::ALPN_GOSSIP) => match handler.gossip() {
            Some(acceptor) => serve_gossip(conn, peer, acceptor, gate).await,
            None => close(&conn, close_code::UNSUPPORTED_PROTOCOL, "gossip not served"),
        },
        other => {
            let alpn = other.map(String::from_utf8_lossy);
            tracing::warn!(alpn = ?alpn, "unsupported protocol; closing");
            close(&conn, close_code::UNSUPPORTED_PROTOCOL, "unsupported protocol");
        }
    }
}

/// Serves the streams of one connection. With a `gate` (the Raft protocol) every request is
/// checked against the admission policy as it is now, so a key revoked while connected is cut
/// off at its next request; without one (the admin protocol) only `Status` and `Query` pass.
async fn serve_rpc(
    conn: quinn::Connection,
    peer: NodeId,
    handler: Arc<dyn RpcHandler>,
    cfg: Arc<QuicConfig>,
    gate: Option<Gate>,
) {
    let read_only = gate.is_none();
    tracing::debug!("connection established");
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok(_) if gate.as_ref().is_some_and(|g| !g.admits(&peer)) => {
                    tracing::warn!(peer_key = %peer, "node key no longer admitted; closing its connection");
                    close(&conn, close_code::NOT_ADMITTED, "node key no longer admitted");
                    break;
                }
                Ok((send, recv)) => {
                    let span = tracing::debug_span!("quic_serve", stream = %recv.id(), kind = tracing::field::Empty);
                    streams.spawn(serve_stream(conn.clone(), peer, handler.clone(), cfg.clone(), read_only, send, recv).instrument(span));
                }
                Err(e) => {
                    tracing::debug!(reason = %e, "connection ended");
                    break;
                }
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
}

/// Serves the gossip streams of one connection: one session per stream, at most two at a time.
async fn serve_gossip(
    conn: quinn::Connection,
    peer: NodeId,
    acceptor: Arc<dyn super::gossip::GossipAcceptor>,
    gate: Gate,
) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = conn.accept_bi(), if sessions.len() < 2 => match accepted {
                Ok(_) if !gate.admits(&peer) => {
                    close(&conn, close_code::NOT_ADMITTED, "node key no longer admitted");
                    break;
                }
                Ok((send, recv)) => {
                    let acceptor = acceptor.clone();
                    let stream = super::gossip::GossipStream { peer, send: Box::new(send), recv: Box::new(recv) };
                    sessions.spawn(async move { acceptor.accept_gossip(stream).await });
                }
                Err(e) => {
                    tracing::debug!(reason = %e, "gossip connection ended");
                    break;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

fn bad_frame(conn: &quinn::Connection, reason: &str) {
    tracing::warn!(remote = %conn.remote_address(), reason, "bad frame; closing the connection");
    close(conn, close_code::BAD_FRAME, "bad frame");
}

async fn serve_stream(
    conn: quinn::Connection,
    from: NodeId,
    handler: Arc<dyn RpcHandler>,
    cfg: Arc<QuicConfig>,
    read_only: bool,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let bytes = match tokio::time::timeout(cfg.request_read_deadline, read_frame(&mut recv)).await {
        Ok(Ok(b)) => b,
        Ok(Err(FrameError::Stream(e))) => {
            tracing::debug!(error = %e, "request stream failed");
            return;
        }
        Ok(Err(e)) => return bad_frame(&conn, &e.to_string()),
        Err(_) => {
            tracing::debug!(deadline = ?cfg.request_read_deadline, "request not received in time");
            let _ = recv.stop(VarInt::from_u32(stream_code::READ_DEADLINE));
            let _ = send.reset(VarInt::from_u32(stream_code::READ_DEADLINE));
            return;
        }
    };
    let req: RpcRequest = match postcard::from_bytes(&bytes) {
        Ok(r) => r,
        Err(e) => return bad_frame(&conn, &format!("undecodable request: {e}")),
    };
    drop(bytes);
    tracing::Span::current().record("kind", req.kind());
    if read_only && !matches!(req, RpcRequest::Status | RpcRequest::Query(_)) {
        tracing::warn!(peer_key = %from, kind = req.kind(), "refused a write or Raft request on the read-only admin protocol");
        close(&conn, close_code::NOT_ADMITTED, "request not allowed on the admin protocol");
        return;
    }
    let stopped = send.stopped();
    let resp = tokio::select! {
        resp = handler.handle(from, req) => resp,
        _ = stopped => {
            tracing::debug!("caller gave up; handler cancelled");
            return;
        }
    };
    let frame = match encode_frame(&resp) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "response cannot be framed");
            let _ = send.reset(VarInt::from_u32(stream_code::RESPONSE_UNFRAMEABLE));
            return;
        }
    };
    match tokio::time::timeout(cfg.response_write_deadline, send.write_all(&frame)).await {
        Ok(Ok(())) => {
            let _ = send.finish();
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "response not delivered"),
        Err(_) => {
            tracing::debug!(deadline = ?cfg.response_write_deadline, "response not written in time");
            let _ = send.reset(VarInt::from_u32(stream_code::WRITE_DEADLINE));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client side

struct Cached {
    addr: String,
    conn: quinn::Connection,
}

type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

struct Shared {
    endpoint: Endpoint,
    identity: Arc<tls::Identity>,
    client_transport: Arc<quinn::TransportConfig>,
    /// One connection per peer key; the async lock serializes dialing so concurrent callers
    /// share one handshake.
    peers: Mutex<HashMap<NodeId, Slot>>,
    /// Connections carrying our SWIM datagrams, one per peer.
    swim: Mutex<HashMap<NodeId, Cached>>,
    closed: AtomicBool,
    local: SocketAddr,
    /// The endpoint's socket, released on close (see [`QuicConfig::close_grace`]).
    socket: Arc<ReleasableSocket>,
    close_grace: Duration,
    /// Bound of a dial (the handshake), however short the deadline of the call that started it.
    dial_deadline: Duration,
    /// Round trips to each peer, from completed calls.
    rtts: super::rtt::RttTable,
}

impl Shared {
    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Slot>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.endpoint.close(VarInt::from_u32(close_code::SHUTDOWN), b"shutdown");
        self.peers().clear();
        self.swim.lock().unwrap_or_else(|p| p.into_inner()).clear();
        // Free the port without waiting for quinn to drain every connection: a node restarting
        // in this process binds it again.
        let (socket, endpoint, grace) = (self.socket.clone(), self.endpoint.clone(), self.close_grace);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if !grace.is_zero() => {
                rt.spawn(async move {
                    let _ = tokio::time::timeout(grace, endpoint.wait_idle()).await;
                    socket.release();
                });
            }
            _ => socket.release(),
        }
        tracing::info!(node = %self.identity.me.short(), local = %self.local, "QUIC endpoint closed");
    }

    fn slot(&self, node: NodeId) -> Slot {
        let mut peers = self.peers();
        if peers.len() >= PEER_TABLE_PRUNE_AT && !peers.contains_key(&node) {
            // Keep slots in use or holding a live connection.
            peers.retain(|_, s| {
                Arc::strong_count(s) > 1
                    || s.try_lock().map(|g| g.as_ref().is_some_and(|c| c.conn.close_reason().is_none())).unwrap_or(true)
            });
        }
        peers.entry(node).or_default().clone()
    }

    /// quinn's smoothed round-trip time of the live connection to `node`, if there is one.
    fn link_rtt(&self, node: &NodeId) -> Option<Duration> {
        let slot = self.peers().get(node).cloned()?;
        let g = slot.try_lock().ok()?;
        g.as_ref().filter(|c| c.conn.close_reason().is_none()).map(|c| c.conn.rtt())
    }

    /// Drops `conn` from the cache if it is still the cached connection of `node`.
    fn forget(&self, node: &NodeId, conn: &quinn::Connection) {
        let slot = self.peers().get(node).cloned();
        if let Some(slot) = slot {
            if let Ok(mut g) = slot.try_lock() {
                if g.as_ref().is_some_and(|c| c.conn.stable_id() == conn.stable_id()) {
                    *g = None;
                }
            }
        }
    }

    /// The cached connection to `to`, or a new one. `dialing` is set while we wait for a
    /// connection (so a deadline hit there reads as "unreachable", not "timed out").
    async fn connection(
        self: &Arc<Self>,
        to: &PeerNode,
        dialing: &AtomicBool,
    ) -> Result<(quinn::Connection, bool), TransportError> {
        let slot = self.slot(to.node);
        dialing.store(true, Ordering::Relaxed);
        let mut g = slot.lock_owned().await;
        if let Some(c) = g.as_ref() {
            if c.addr == to.addr && c.conn.close_reason().is_none() {
                dialing.store(false, Ordering::Relaxed);
                return Ok((c.conn.clone(), false));
            }
        }
        if let Some(old) = g.take() {
            close(&old.conn, close_code::SHUTDOWN, "replaced");
        }
        // The dial runs in a task of its own that holds the slot: a caller whose deadline
        // passes mid-handshake (a slow or lossy link) does not abort it, and the next call
        // waits for it instead of starting over.
        let (shared, peer) = (self.clone(), to.clone());
        let dial = tokio::spawn(
            async move {
                let conn = match tokio::time::timeout(shared.dial_deadline, shared.dial(&peer, ALPN_RAFT)).await {
                    Ok(r) => r?,
                    Err(_) => {
                        return Err(TransportError::Unreachable(format!(
                            "{} (no handshake within {:?})",
                            peer.addr, shared.dial_deadline
                        )))
                    }
                };
                *g = Some(Cached { addr: peer.addr.clone(), conn: conn.clone() });
                Ok(conn)
            }
            .instrument(tracing::Span::current()),
        );
        let conn =
            dial.await.map_err(|e| TransportError::Unreachable(format!("{} (dial task failed: {e})", to.addr)))??;
        dialing.store(false, Ordering::Relaxed);
        Ok((conn, true))
    }

    #[tracing::instrument(name = "quic_dial", level = "info", skip_all, fields(peer = %to.node.short(), addr = %to.addr, alpn = %String::from_utf8_lossy(alpn)))]
    async fn dial(&self, to: &PeerNode, alpn: &[u8]) -> Result<quinn::Connection, TransportError> {
        let unreachable = |e: &dyn std::fmt::Display| TransportError::Unreachable(format!("{} ({e})", to.addr));
        let addr = resolve(&to.addr).await.map_err(|e| unreachable(&e))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(self.identity.client_config(Some(to.node), alpn)?));
        cfg.transport_config(self.client_transport.clone());
        let connecting = self.endpoint.connect_with(cfg, addr, SERVER_NAME).map_err(|e| unreachable(&e))?;
        let conn = connecting.await.map_err(|e| classify(&to.addr, e))?;
        // The verifier pinned the key; check what the session reports all the same.
        if peer_node_id(&conn) != Some(to.node) {
            close(&conn, close_code::NO_IDENTITY, "unexpected peer identity");
            return Err(TransportError::Refused { peer: to.addr.clone(), reason: "peer identity mismatch".into() });
        }
        tracing::debug!(remote = %conn.remote_address(), "connected");
        Ok(conn)
    }

    async fn call(
        self: &Arc<Self>,
        to: &PeerNode,
        req: RpcRequest,
        dialing: &AtomicBool,
    ) -> Result<RpcResponse, TransportError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(TransportError::Unreachable(format!("{} (local endpoint closed)", to.addr)));
        }
        let frame = encode_frame(&req).map_err(|reason| TransportError::BadFrame { peer: to.addr.clone(), reason })?;
        let measured = super::rtt::is_round_trip(&req);
        drop(req);
        let mut redialed = false;
        loop {
            let (conn, fresh) = self.connection(to, dialing).await?;
            match conn.open_bi().await {
                Ok((send, recv)) => {
                    // The handshake is not part of the sample; the peer's service time is.
                    let started = std::time::Instant::now();
                    let resp = self.exchange(to, &conn, send, recv, &frame).await;
                    if resp.is_ok() && measured {
                        self.rtts.sample(to.node, started.elapsed());
                    }
                    return resp;
                }
                Err(e) => {
                    self.forget(&to.node, &conn);
                    // Nothing was sent: a cached connection that turns out dead is re-dialed once.
                    if fresh || redialed {
                        return Err(classify(&to.addr, e));
                    }
                    tracing::debug!(reason = %e, "cached connection is dead; re-dialing");
                    redialed = true;
                }
            }
        }
    }

    async fn exchange(
        &self,
        to: &PeerNode,
        conn: &quinn::Connection,
        send: SendStream,
        mut recv: RecvStream,
        frame: &[u8],
    ) -> Result<RpcResponse, TransportError> {
        let mut send = ResetOnDrop { send, done: false };
        if let Err(e) = send.send.write_all(frame).await {
            return Err(self.write_failed(to, conn, e));
        }
        let _ = send.send.finish();
        send.done = true;
        let bytes = match read_frame(&mut recv).await {
            Ok(b) => b,
            Err(FrameError::Stream(e)) => return Err(self.read_failed(to, conn, e)),
            Err(e) => return Err(self.bad_response(to, conn, e.to_string())),
        };
        postcard::from_bytes(&bytes).map_err(|e| self.bad_response(to, conn, format!("undecodable response: {e}")))
    }

    fn bad_response(&self, to: &PeerNode, conn: &quinn::Connection, reason: String) -> TransportError {
        bad_frame(conn, &reason);
        self.forget(&to.node, conn);
        TransportError::BadFrame { peer: to.addr.clone(), reason }
    }

    fn write_failed(&self, to: &PeerNode, conn: &quinn::Connection, e: WriteError) -> TransportError {
        match e {
            WriteError::ConnectionLost(e) => {
                self.forget(&to.node, conn);
                classify(&to.addr, e)
            }
            other => TransportError::Unreachable(format!("{} (request not sent: {other})", to.addr)),
        }
    }

    fn read_failed(&self, to: &PeerNode, conn: &quinn::Connection, e: ReadError) -> TransportError {
        match e {
            ReadError::ConnectionLost(e) => {
                self.forget(&to.node, conn);
                classify(&to.addr, e)
            }
            ReadError::Reset(code) if code == VarInt::from_u32(stream_code::RESPONSE_UNFRAMEABLE) => {
                TransportError::BadFrame { peer: to.addr.clone(), reason: "the response could not be framed".into() }
            }
            other => TransportError::Unreachable(format!("{} (no response: {other})", to.addr)),
        }
    }
}

/// Resets a request stream that is dropped before it was finished (a cancelled call), so the
/// server sees a reset stream rather than a truncated — and connection-closing — frame.
struct ResetOnDrop {
    send: SendStream,
    done: bool,
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.send.reset(VarInt::from_u32(stream_code::CANCELLED));
        }
    }
}

/// One read-only call over [`ALPN_ADMIN`] from a throw-away key: what `spore status` and
/// `spore query` use. Pins the node's key when `expected` is given; returns the key the node
/// proved it holds, with its answer. Only `Status` and `Query` are served on this protocol.
pub async fn admin_call(
    addr: &str,
    expected: Option<NodeId>,
    req: RpcRequest,
    timeout: Duration,
) -> Result<(NodeId, RpcResponse), TransportError> {
    let key = NodeKey::generate().map_err(|e| TransportError::Unreachable(format!("{addr} (no key: {e})")))?;
    call_once(&key, addr, expected, ALPN_ADMIN, req, timeout).await
}

/// One call on its own short-lived connection, as `key`, over `alpn` ([`ALPN_RAFT`] needs a
/// key the node admits). For tools that act for a node without running one, such as
/// `spore service register` forwarding a signed event. Pins the node's key when `expected`
/// is given; returns the key the node proved it holds, with its answer.
#[tracing::instrument(name = "quic_call_once", level = "info", skip(key, req), fields(kind = req.kind()))]
pub async fn call_once(
    key: &NodeKey,
    addr: &str,
    expected: Option<NodeId>,
    alpn: &[u8],
    req: RpcRequest,
    timeout: Duration,
) -> Result<(NodeId, RpcResponse), TransportError> {
    let unreachable = |e: &dyn std::fmt::Display| TransportError::Unreachable(format!("{addr} ({e})"));
    let work = async {
        let remote = resolve(addr).await.map_err(|e| unreachable(&e))?;
        let local: SocketAddr =
            if remote.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
        let endpoint = Endpoint::client(local).map_err(|e| unreachable(&e))?;
        let identity = tls::Identity::new(key)?;
        let cfg = quinn::ClientConfig::new(Arc::new(identity.client_config(expected, alpn)?));
        let conn = endpoint
            .connect_with(cfg, remote, SERVER_NAME)
            .map_err(|e| unreachable(&e))?
            .await
            .map_err(|e| classify(addr, e))?;
        let node = peer_node_id(&conn)
            .ok_or_else(|| TransportError::Refused { peer: addr.to_string(), reason: "no peer identity".into() })?;
        let frame = encode_frame(&req).map_err(|reason| TransportError::BadFrame { peer: addr.to_string(), reason })?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| classify(addr, e))?;
        send.write_all(&frame).await.map_err(|e| match e {
            WriteError::ConnectionLost(e) => classify(addr, e),
            other => unreachable(&other),
        })?;
        let _ = send.finish();
        let bytes = read_frame(&mut recv).await.map_err(|e| match e {
            FrameError::Stream(ReadError::ConnectionLost(e)) => classify(addr, e),
            other => TransportError::BadFrame { peer: addr.to_string(), reason: other.to_string() },
        })?;
        let resp = postcard::from_bytes(&bytes).map_err(|e| TransportError::BadFrame {
            peer: addr.to_string(),
            reason: format!("undecodable response: {e}"),
        })?;
        close(&conn, close_code::SHUTDOWN, "done");
        endpoint.wait_idle().await;
        Ok((node, resp))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| TransportError::Timeout { peer: addr.to_string(), after: timeout })?
}

/// Maps why a connection failed to what the caller sees.
fn classify(peer: &str, e: ConnectionError) -> TransportError {
    let is_tls = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match e {
        // The peer's TLS stack refused us (e.g. our key is not admitted there).
        ConnectionError::ConnectionClosed(c) if is_tls(c.error_code) => {
            TransportError::Refused { peer: peer.to_string(), reason: format!("handshake refused by the peer: {c}") }
        }
        // Ours refused the peer (e.g. it does not hold the key we expected).
        ConnectionError::TransportError(t) if is_tls(t.code) => {
            TransportError::Refused { peer: peer.to_string(), reason: format!("handshake failed: {t}") }
        }
        ConnectionError::ApplicationClosed(c) if c.error_code == VarInt::from_u32(close_code::BAD_FRAME) => {
            TransportError::BadFrame {
                peer: peer.to_string(),
                reason: "the peer closed the connection over a bad frame".into(),
            }
        }
        ConnectionError::ApplicationClosed(c)
            if c.error_code == VarInt::from_u32(close_code::UNSUPPORTED_PROTOCOL)
                || c.error_code == VarInt::from_u32(close_code::NO_IDENTITY)
                || c.error_code == VarInt::from_u32(close_code::NOT_ADMITTED) =>
        {
            TransportError::Refused { peer: peer.to_string(), reason: c.to_string() }
        }
        other => TransportError::Unreachable(format!("{peer} ({other})")),
    }
}

/// The outgoing side of a QUIC endpoint. Cheap to clone.
#[derive(Clone)]
pub struct QuicTransport {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("node", &self.shared.identity.me)
            .field("local", &self.shared.local)
            .finish()
    }
}

impl QuicTransport {
    /// The bound local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// The node this endpoint authenticates as.
    pub fn node_id(&self) -> NodeId {
        self.shared.identity.me
    }
}

impl super::gossip::GossipDialer for QuicTransport {
    fn open_gossip(&self, to: &PeerNode) -> BoxFuture<'_, Result<super::gossip::GossipStream, TransportError>> {
        let to = to.clone();
        let span = tracing::debug_span!("quic_gossip_dial", peer = %to);
        Box::pin(
            async move {
                let (_, send, recv) = self.open_gossip_conn(&to).await?;
                Ok(super::gossip::GossipStream { peer: to.node, send: Box::new(send), recv: Box::new(recv) })
            }
            .instrument(span),
        )
    }
}

impl QuicTransport {
    /// Dials `to` under the gossip ALPN (a fresh connection, closed when its streams are
    /// dropped) and opens the session's stream. The connection is returned for its statistics.
    pub async fn open_gossip_conn(
        &self,
        to: &PeerNode,
    ) -> Result<(quinn::Connection, SendStream, RecvStream), TransportError> {
        let conn = self.connect_alpn(to, super::gossip::ALPN_GOSSIP).await?;
        let (send, recv) = conn.open_bi().await.map_err(|e| classify(&to.addr, e))?;
        Ok((conn, send, recv))
    }

    /// Dials a fresh connection to `to` under `alpn`, checking the peer's key.
    async fn connect_alpn(&self, to: &PeerNode, alpn: &[u8]) -> Result<quinn::Connection, TransportError> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(TransportError::Unreachable(format!("{} (local endpoint closed)", to.addr)));
        }
        self.shared.dial(to, alpn).await
    }
}

impl super::liveness::SwimLink for QuicTransport {
    fn send_datagram(&self, to: &PeerNode, data: bytes::Bytes) -> BoxFuture<'_, ()> {
        let to = to.clone();
        Box::pin(async move {
            let cached = {
                let swim = self.shared.swim.lock().unwrap_or_else(|p| p.into_inner());
                swim.get(&to.node)
                    .filter(|c| c.addr == to.addr && c.conn.close_reason().is_none())
                    .map(|c| c.conn.clone())
            };
            let conn = match cached {
                Some(c) => c,
                None => match tokio::time::timeout(
                    Duration::from_secs(2),
                    self.connect_alpn(&to, super::liveness::ALPN_SWIM),
                )
                .await
                {
                    Ok(Ok(c)) => {
                        let mut swim = self.shared.swim.lock().unwrap_or_else(|p| p.into_inner());
                        if swim.len() >= PEER_TABLE_PRUNE_AT {
                            swim.retain(|_, c| c.conn.close_reason().is_none());
                        }
                        swim.insert(to.node, Cached { addr: to.addr.clone(), conn: c.clone() });
                        c
                    }
                    _ => return,
                },
            };
            if let Err(e) = conn.send_datagram(data) {
                tracing::debug!(peer = %to.node.short(), error = %e, "SWIM datagram not sent");
            }
        })
    }
}

impl Transport for QuicTransport {
    fn gossip_dialer(&self) -> Option<Arc<dyn super::gossip::GossipDialer>> {
        Some(Arc::new(self.clone()))
    }

    fn swim_link(&self) -> Option<Arc<dyn super::liveness::SwimLink>> {
        Some(Arc::new(self.clone()))
    }

    fn call(
        &self,
        to: &PeerNode,
        req: RpcRequest,
        floor: Duration,
    ) -> BoxFuture<'_, Result<RpcResponse, TransportError>> {
        let to = to.clone();
        let timeout = self.deadline(&to, floor);
        let span = tracing::debug_span!("quic_call", peer = %to, kind = req.kind(), deadline = ?timeout);
        Box::pin(
            async move {
                let dialing = AtomicBool::new(false);
                match tokio::time::timeout(timeout, self.shared.call(&to, req, &dialing)).await {
                    Ok(r) => r,
                    Err(_) if dialing.load(Ordering::Relaxed) => {
                        Err(TransportError::Unreachable(format!("{} (no connection within {timeout:?})", to.addr)))
                    }
                    Err(_) => {
                        self.shared.rtts.timed_out(&to.node);
                        Err(TransportError::Timeout { peer: to.addr.clone(), after: timeout })
                    }
                }
            }
            .instrument(span),
        )
    }

    fn deadline(&self, to: &PeerNode, floor: Duration) -> Duration {
        self.shared.rtts.deadline(&to.node, floor, self.shared.link_rtt(&to.node))
    }

    fn round_trip(&self, node: &NodeId) -> Option<super::rtt::RoundTrip> {
        self.shared.rtts.round_trip(node, self.shared.link_rtt(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_a_big_endian_length() {
        let f = encode_frame(&RpcRequest::ReadIndex).expect("frame");
        let n = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize;
        assert_eq!(n, f.len() - 4);
        let back: RpcRequest = postcard::from_bytes(&f[4..]).expect("decode");
        assert!(matches!(back, RpcRequest::ReadIndex));
    }

    #[test]
    fn oversized_frames_are_refused_when_encoding() {
        let big = vec![0u8; FRAME_BYTES_MAX + 1];
        assert!(encode_frame(&big).is_err());
    }

    #[test]
    fn reset_key_signs_and_verifies() {
        use quinn::crypto::HmacKey;
        let k = ResetKey::derive(&NodeKey::from_seed([5; 32]));
        let mut sig = [0u8; 32];
        k.sign(b"cid", &mut sig);
        assert!(k.verify(b"cid", &sig).is_ok());
        assert!(k.verify(b"cie", &sig).is_err());
        assert!(k.verify(b"cid", &sig[..16]).is_err());
    }

    #[test]
    fn admission_sets_are_shared_and_updatable() {
        let a = Admission::only([NodeId([1; 32])]);
        let p = a.policy();
        assert!(p(&NodeId([1; 32])));
        assert!(!p(&NodeId([2; 32])));
        a.allow(NodeId([2; 32]));
        assert!(p(&NodeId([2; 32])));
        a.revoke(&NodeId([1; 32]));
        assert!(!p(&NodeId([1; 32])));
        assert!(Admission::allow_all().is_admitted(&NodeId([9; 32])));
    }
}
