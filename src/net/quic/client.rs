//! The client side of an endpoint, [`QuicTransport`]: one cached connection per peer key
//! (dialed in a task of its own, re-dialed when dead), calls with deadlines that follow the
//! link, gossip dials and SWIM datagrams; and one-off calls for tools ([`call_once`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::{ConnectionError, Endpoint, ReadError, RecvStream, SendStream, VarInt, WriteError};
use tracing::Instrument;

use super::endpoint::{close, peer_node_id, resolve, transport_config};
use super::framing::{encode_frame, read_frame, FrameError};
use super::server::bad_frame;
use super::socket::ReleasableSocket;
use super::{close_code, stream_code, tls, QuicConfig, ALPN_ADMIN, ALPN_RAFT};
use crate::core::keys::NodeKey;
use crate::core::sync;
use crate::core::types::NodeId;
use crate::net::{BoxFuture, Transport, TransportError};
use crate::raft::{RpcRequest, RpcResponse};
use crate::wire::rpc::PeerNode;

/// The TLS server name sent by callers (identity is the pinned key, not the name).
pub(super) const SERVER_NAME: &str = "spores";
/// Prune the per-peer connection table beyond this many entries.
const PEER_TABLE_PRUNE_AT: usize = 1024;

/// A quinn client config that presents `key` and accepts only a server holding `expected`,
/// negotiating `alpn` — for tools and tests that speak the protocol directly.
pub fn client_config(key: &NodeKey, expected: NodeId, alpn: &[u8]) -> Result<quinn::ClientConfig, TransportError> {
    let identity = tls::Identity::new(key)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(identity.client_config(Some(expected), alpn)?));
    cfg.transport_config(Arc::new(transport_config(&QuicConfig::default(), false)?));
    Ok(cfg)
}

pub(super) struct Cached {
    addr: String,
    conn: quinn::Connection,
}

pub(super) type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

pub(super) struct Shared {
    pub(super) endpoint: Endpoint,
    pub(super) identity: Arc<tls::Identity>,
    pub(super) client_transport: Arc<quinn::TransportConfig>,
    /// One connection per peer key; the async lock serializes dialing so concurrent callers
    /// share one handshake.
    pub(super) peers: Mutex<HashMap<NodeId, Slot>>,
    /// Connections carrying our SWIM datagrams, one per peer.
    pub(super) swim: Mutex<HashMap<NodeId, Cached>>,
    pub(super) closed: AtomicBool,
    pub(super) local: SocketAddr,
    /// The endpoint's socket, released on close (see [`QuicConfig::close_grace`]).
    pub(super) socket: Arc<ReleasableSocket>,
    pub(super) close_grace: Duration,
    /// Bound of a dial (the handshake), however short the deadline of the call that started it.
    pub(super) dial_deadline: Duration,
    /// Round trips to each peer, from completed calls.
    pub(super) rtts: crate::net::rtt::RttTable,
    /// The places for incoming connections, which learn here the peers dialed (their
    /// connections to us take reserved places).
    pub(super) places: Arc<super::slots::Places>,
}

impl Shared {
    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Slot>> {
        sync::lock(&self.peers)
    }

    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.endpoint.close(VarInt::from_u32(close_code::SHUTDOWN), b"shutdown");
        self.peers().clear();
        sync::lock(&self.swim).clear();
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

    /// Refuses a call, stream or dial to `to` once this endpoint is closed.
    pub(super) fn check_open(&self, to: &PeerNode) -> Result<(), TransportError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(TransportError::Unreachable(format!("{} (local endpoint closed)", to.addr)));
        }
        Ok(())
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
    pub(super) fn forget(&self, node: &NodeId, conn: &quinn::Connection) {
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
    pub(super) async fn connection(
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
        self.places.dialed(conn.remote_address(), to.node);
        Ok(conn)
    }

    async fn call(
        self: &Arc<Self>,
        to: &PeerNode,
        req: RpcRequest,
        dialing: &AtomicBool,
    ) -> Result<RpcResponse, TransportError> {
        self.check_open(to)?;
        let frame = encode_frame(&req).map_err(|reason| TransportError::BadFrame { peer: to.addr.clone(), reason })?;
        let measured = crate::net::rtt::is_round_trip(&req);
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

/// [`admin_call`] as `key` (for a node whose admin reads admit only some keys,
/// [`super::AdminReads`]).
pub async fn admin_call_as(
    key: &NodeKey,
    addr: &str,
    expected: Option<NodeId>,
    req: RpcRequest,
    timeout: Duration,
) -> Result<(NodeId, RpcResponse), TransportError> {
    call_once(key, addr, expected, ALPN_ADMIN, req, timeout).await
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
        let answer = exchange(&conn, addr, &req).await?;
        close(&conn, close_code::SHUTDOWN, "done");
        endpoint.wait_idle().await;
        Ok(answer)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| TransportError::Timeout { peer: addr.to_string(), after: timeout })?
}

/// One request on its own stream of `conn` and its answer, with the key the node proved it
/// holds.
pub(super) async fn exchange(
    conn: &quinn::Connection,
    addr: &str,
    req: &RpcRequest,
) -> Result<(NodeId, RpcResponse), TransportError> {
    let node = peer_node_id(conn)
        .ok_or_else(|| TransportError::Refused { peer: addr.to_string(), reason: "no peer identity".into() })?;
    let frame = encode_frame(req).map_err(|reason| TransportError::BadFrame { peer: addr.to_string(), reason })?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| classify(addr, e))?;
    send.write_all(&frame).await.map_err(|e| match e {
        WriteError::ConnectionLost(e) => classify(addr, e),
        other => TransportError::Unreachable(format!("{addr} ({other})")),
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
    Ok((node, resp))
}

/// Maps why a connection failed to what the caller sees.
pub(super) fn classify(peer: &str, e: ConnectionError) -> TransportError {
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
        // The peer's endpoint turned the connection away before any handshake: it holds as
        // many connections as it takes (or it is closing).
        ConnectionError::ConnectionClosed(c) if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED => {
            TransportError::Unreachable(format!("{peer} (refused: the node is at its connection limit, or closing)"))
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
    pub(super) shared: Arc<Shared>,
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

impl crate::net::gossip::GossipDialer for QuicTransport {
    fn open_gossip(&self, to: &PeerNode) -> BoxFuture<'_, Result<crate::net::gossip::GossipStream, TransportError>> {
        let to = to.clone();
        let span = tracing::debug_span!("quic_gossip_dial", peer = %to);
        Box::pin(
            async move {
                let (_, send, recv) = self.open_gossip_conn(&to).await?;
                Ok(crate::net::gossip::GossipStream { peer: to.node, send: Box::new(send), recv: Box::new(recv) })
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
        let conn = self.connect_alpn(to, crate::net::gossip::ALPN_GOSSIP).await?;
        let (send, recv) = conn.open_bi().await.map_err(|e| classify(&to.addr, e))?;
        Ok((conn, send, recv))
    }

    /// Dials a fresh connection to `to` under `alpn`, checking the peer's key.
    async fn connect_alpn(&self, to: &PeerNode, alpn: &[u8]) -> Result<quinn::Connection, TransportError> {
        self.shared.check_open(to)?;
        self.shared.dial(to, alpn).await
    }
}

impl crate::net::liveness::SwimLink for QuicTransport {
    fn send_datagram(&self, to: &PeerNode, data: bytes::Bytes) -> BoxFuture<'_, ()> {
        let to = to.clone();
        Box::pin(async move {
            let cached = {
                let swim = sync::lock(&self.shared.swim);
                swim.get(&to.node)
                    .filter(|c| c.addr == to.addr && c.conn.close_reason().is_none())
                    .map(|c| c.conn.clone())
            };
            let conn = match cached {
                Some(c) => c,
                None => match tokio::time::timeout(
                    Duration::from_secs(2),
                    self.connect_alpn(&to, crate::net::liveness::ALPN_SWIM),
                )
                .await
                {
                    Ok(Ok(c)) => {
                        let mut swim = sync::lock(&self.shared.swim);
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
    fn gossip_dialer(&self) -> Option<Arc<dyn crate::net::gossip::GossipDialer>> {
        Some(Arc::new(self.clone()))
    }

    fn swim_link(&self) -> Option<Arc<dyn crate::net::liveness::SwimLink>> {
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

    fn streams_appends(&self) -> bool {
        true
    }

    fn append_stream(
        &self,
        to: &PeerNode,
        requests: crate::net::AppendRequests,
        floor: Duration,
    ) -> BoxFuture<'_, Result<crate::net::AppendReplies, TransportError>> {
        let to = to.clone();
        let deadline = self.deadline(&to, floor);
        let span = tracing::debug_span!("quic_append_stream", peer = %to, ?deadline);
        Box::pin(async move { super::append_lane::open(&self.shared, &to, requests, deadline).await }.instrument(span))
    }

    fn deadline(&self, to: &PeerNode, floor: Duration) -> Duration {
        self.shared.rtts.deadline(&to.node, floor, self.shared.link_rtt(&to.node))
    }

    fn round_trip(&self, node: &NodeId) -> Option<crate::net::rtt::RoundTrip> {
        self.shared.rtts.round_trip(node, self.shared.link_rtt(node))
    }
}
