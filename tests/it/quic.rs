//! The QUIC transport on loopback: authentication, admission, framing limits, timeouts, and a
//! three-voter `SporeSystem` cluster that survives a leader restart on the same port.
//!
//! `RUST_LOG=mycnet_spores=debug cargo test --test it quic -- --nocapture` shows the spans.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mycnet_spores::net::quic::{self, close_code, Admission, QuicBackend, QuicConfig, ALPN_RAFT, FRAME_BYTES_MAX};
use mycnet_spores::net::{Binding, BoxFuture, NetworkBackend, RpcHandler, SharedTransport, TransportError};
use mycnet_spores::raft::{RpcRequest, RpcResponse};
use mycnet_spores::wire::rpc::RemoteFailure;
use mycnet_spores::{Endpoint, NetworkIdentity, NodeId, NodeKey, PeerNode, SporeSystem};

pub(crate) fn trace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Answers `ReadIndex` with its own number after an optional delay, and records who asked.
pub(crate) struct Echo {
    answer: u64,
    delay: Duration,
    calls: AtomicUsize,
    from: Mutex<Vec<NodeId>>,
}

impl Echo {
    fn new(answer: u64, delay: Duration) -> Arc<Self> {
        Arc::new(Echo { answer, delay, calls: AtomicUsize::new(0), from: Mutex::new(Vec::new()) })
    }

    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn callers(&self) -> Vec<NodeId> {
        self.from.lock().expect("lock").clone()
    }
}

impl RpcHandler for Echo {
    fn handle(&self, from: NodeId, req: RpcRequest) -> BoxFuture<'_, RpcResponse> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.from.lock().expect("lock").push(from);
            if !self.delay.is_zero() {
                // Part of the scenario, not a wait: a slow handler, to hold its stream open.
                tokio::time::sleep(self.delay).await;
            }
            match req {
                RpcRequest::ReadIndex => RpcResponse::ReadIndex(Ok(Some(self.answer))),
                other => RpcResponse::ReadIndex(Err(RemoteFailure::Other(format!("unsupported: {}", other.kind())))),
            }
        })
    }
}

struct Node {
    key: NodeKey,
    peer: PeerNode,
    transport: SharedTransport,
    binding: Binding,
    echo: Arc<Echo>,
}

/// A node bound through the `NetworkBackend` seam on 127.0.0.1, port 0.
async fn node(seed: u8, admission: Admission, delay: Duration) -> Node {
    let key = NodeKey::from_seed([seed; 32]);
    let echo = Echo::new(seed as u64, delay);
    let backend = QuicBackend::new(key.clone(), admission);
    let binding =
        backend.bind(&PeerNode { node: key.node_id(), addr: "127.0.0.1:0".into() }, echo.clone()).await.expect("bind");
    assert_ne!(binding.addr, "127.0.0.1:0", "the binding carries the actual port");
    let peer = PeerNode { node: key.node_id(), addr: binding.addr.clone() };
    Node { key, peer, transport: binding.transport.clone(), binding, echo }
}

async fn read_index(from: &Node, to: &PeerNode, timeout: Duration) -> Result<Option<u64>, TransportError> {
    match from.transport.call(to, RpcRequest::ReadIndex, timeout).await? {
        RpcResponse::ReadIndex(Ok(n)) => Ok(n),
        other => panic!("unexpected response {other:?}"),
    }
}

const T: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_calls_succeed_both_ways_and_carry_the_callers_key() {
    trace();
    let nodes = [
        node(11, Admission::allow_all(), Duration::ZERO).await,
        node(12, Admission::allow_all(), Duration::ZERO).await,
        node(13, Admission::allow_all(), Duration::ZERO).await,
    ];
    for a in &nodes {
        for b in &nodes {
            // Including a node calling itself (membership requests may target the local node).
            assert_eq!(read_index(a, &b.peer, T).await.expect("call"), Some(b.echo.answer));
        }
    }
    for b in &nodes {
        let mut callers = b.echo.callers();
        callers.sort();
        let mut want: Vec<NodeId> = nodes.iter().map(|n| n.key.node_id()).collect();
        want.sort();
        assert_eq!(callers, want, "`from` is each caller's authenticated key");
    }
    // Many concurrent calls share one connection per peer.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (t, to) = (nodes[0].transport.clone(), nodes[1].peer.clone());
        calls.spawn(async move { t.call(&to, RpcRequest::ReadIndex, T).await });
    }
    while let Some(r) = calls.join_next().await {
        assert!(matches!(r.expect("task"), Ok(RpcResponse::ReadIndex(Ok(Some(12))))));
    }
    assert_eq!(nodes[1].echo.calls(), 3 + 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_unadmitted_key_is_refused_before_any_request() {
    trace();
    let admission = Admission::only([]);
    let server = node(21, admission.clone(), Duration::ZERO).await;
    let client = node(22, Admission::allow_all(), Duration::ZERO).await;
    let err = read_index(&client, &server.peer, T).await.expect_err("refused");
    assert!(matches!(err, TransportError::Refused { .. }), "unadmitted caller is refused, got {err:?}");
    assert_eq!(server.echo.calls(), 0, "the handler never sees an unadmitted caller");
    // Admission is read per handshake: once admitted, the caller re-dials and gets through.
    admission.allow(client.key.node_id());
    assert_eq!(read_index(&client, &server.peer, T).await.expect("admitted now"), Some(21));
    assert_eq!(server.echo.callers(), vec![client.key.node_id()]);
}

/// A key revoked while connected is cut off at its next request, and stays out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_a_revoked_key_is_cut_off_at_its_next_request() {
    trace();
    let admission = Admission::only([]);
    let server = node(26, admission.clone(), Duration::ZERO).await;
    let client = node(27, Admission::allow_all(), Duration::ZERO).await;
    admission.allow(client.key.node_id());
    assert_eq!(read_index(&client, &server.peer, T).await.expect("admitted"), Some(26));
    admission.revoke(&client.key.node_id());
    let err = read_index(&client, &server.peer, T).await.expect_err("revoked");
    assert!(matches!(err, TransportError::Refused { .. }), "{err:?}");
    let err = read_index(&client, &server.peer, T).await.expect_err("still revoked after re-dialing");
    assert!(matches!(err, TransportError::Refused { .. }), "{err:?}");
    assert_eq!(server.echo.calls(), 1, "nothing after the revocation reached the handler");
}

/// Operators read status and registries from any key over the admin protocol; nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_admin_protocol_serves_reads_from_any_key_and_nothing_else() {
    trace();
    let server = node(24, Admission::only([]), Duration::ZERO).await;
    // A read from an unadmitted, throw-away key gets through, and the node's key is reported.
    let (key, resp) = quic::admin_call(&server.peer.addr, None, RpcRequest::Status, T).await.expect("admin read");
    assert_eq!(key, server.key.node_id());
    assert!(matches!(resp, RpcResponse::ReadIndex(Err(_))), "the echo handler answered: {resp:?}");
    assert_eq!(server.echo.calls(), 1);
    // Pinning the wrong key fails the handshake.
    let other = NodeKey::from_seed([25; 32]).node_id();
    let err = quic::admin_call(&server.peer.addr, Some(other), RpcRequest::Status, T).await.expect_err("wrong key");
    assert!(matches!(err, TransportError::Refused { .. }), "{err:?}");
    // A Raft or write request on the admin protocol closes the connection unserved.
    let err = quic::admin_call(&server.peer.addr, Some(server.key.node_id()), RpcRequest::ReadIndex, T)
        .await
        .expect_err("not allowed");
    assert!(matches!(err, TransportError::Refused { .. }), "{err:?}");
    assert_eq!(server.echo.calls(), 1, "the handler never saw the refused request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_caller_refuses_a_server_with_another_key() {
    trace();
    let server = node(31, Admission::allow_all(), Duration::ZERO).await;
    let client = node(32, Admission::allow_all(), Duration::ZERO).await;
    let impostor = PeerNode { node: NodeKey::from_seed([33; 32]).node_id(), addr: server.peer.addr.clone() };
    let err = read_index(&client, &impostor, T).await.expect_err("wrong key");
    assert!(matches!(err, TransportError::Refused { .. }), "{err:?}");
    assert_eq!(server.echo.calls(), 0);
    // The right key at the same address works.
    assert_eq!(read_index(&client, &server.peer, T).await.expect("right key"), Some(31));
}

/// A hand-built quinn client with the product's raw-public-key config.
pub(crate) async fn raw_client(
    key: &NodeKey,
    server: &PeerNode,
    alpn: &[u8],
) -> (quinn::Endpoint, Result<quinn::Connection, quinn::ConnectionError>) {
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    let cfg = quic::client_config(key, server.node, alpn).expect("client config");
    let conn = ep.connect_with(cfg, server.addr.parse().expect("server addr"), "spores").expect("connect").await;
    (ep, conn)
}

/// Sends `bytes` on a new stream and reads the whole answer.
pub(crate) async fn raw_exchange(conn: &quinn::Connection, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(bytes).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    recv.read_to_end(FRAME_BYTES_MAX + 4).await.map_err(|e| e.to_string())
}

pub(crate) fn decode_read_index(frame: &[u8]) -> Option<u64> {
    let n = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    assert_eq!(n, frame.len() - 4);
    match postcard::from_bytes::<RpcResponse>(&frame[4..]).expect("response decodes") {
        RpcResponse::ReadIndex(Ok(n)) => n,
        other => panic!("unexpected {other:?}"),
    }
}

pub(crate) async fn closed_with_bad_frame(conn: &quinn::Connection) {
    let reason = tokio::time::timeout(T, conn.closed()).await.expect("connection closed in time");
    match reason {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, quinn::VarInt::from_u32(close_code::BAD_FRAME), "{c}")
        }
        other => panic!("expected an application close, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_bad_frames_close_only_their_connection() {
    trace();
    let server = node(41, Admission::allow_all(), Duration::ZERO).await;
    let key = NodeKey::from_seed([42; 32]);
    let request = quic::encode_frame(&RpcRequest::ReadIndex).expect("frame");

    let (_ep_good, good) = raw_client(&key, &server.peer, ALPN_RAFT).await;
    let good = good.expect("well-behaved connection");
    assert_eq!(decode_read_index(&raw_exchange(&good, &request).await.expect("good call")), Some(41));

    // An oversized length prefix: refused before any allocation, connection closed.
    let (_ep_a, oversized) = raw_client(&key, &server.peer, ALPN_RAFT).await;
    let oversized = oversized.expect("connect");
    let prefix = ((FRAME_BYTES_MAX + 1) as u32).to_be_bytes();
    assert!(raw_exchange(&oversized, &prefix).await.is_err());
    closed_with_bad_frame(&oversized).await;

    // A frame of garbage that postcard cannot decode.
    let (_ep_b, garbage) = raw_client(&key, &server.peer, ALPN_RAFT).await;
    let garbage = garbage.expect("connect");
    let mut junk = 8u32.to_be_bytes().to_vec();
    junk.extend_from_slice(&[0xff; 8]);
    assert!(raw_exchange(&garbage, &junk).await.is_err());
    closed_with_bad_frame(&garbage).await;

    // A frame cut short by the end of the stream.
    let (_ep_c, truncated) = raw_client(&key, &server.peer, ALPN_RAFT).await;
    let truncated = truncated.expect("connect");
    assert!(raw_exchange(&truncated, &request[..request.len() - 1]).await.is_err());
    closed_with_bad_frame(&truncated).await;

    // The well-behaved connection is unaffected, and so is everyone else.
    assert!(good.close_reason().is_none());
    assert_eq!(decode_read_index(&raw_exchange(&good, &request).await.expect("good call again")), Some(41));
    let other = node(43, Admission::allow_all(), Duration::ZERO).await;
    assert_eq!(read_index(&other, &server.peer, T).await.expect("other caller"), Some(41));
    assert_eq!(server.echo.calls(), 3, "bad frames never reach the handler");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_unknown_alpn_is_refused() {
    trace();
    let server = node(51, Admission::allow_all(), Duration::ZERO).await;
    let key = NodeKey::from_seed([52; 32]);
    let (_ep, conn) = raw_client(&key, &server.peer, b"spores-bogus/1").await;
    match conn {
        Err(_) => {}
        Ok(c) => {
            // Should the handshake complete, the server closes at once.
            let reason = tokio::time::timeout(T, c.closed()).await.expect("closed");
            panic!("unknown ALPN was accepted by the handshake (then closed: {reason})");
        }
    }
    assert_eq!(server.echo.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_call_times_out_on_a_slow_handler() {
    trace();
    let server = node(61, Admission::allow_all(), Duration::from_secs(3)).await;
    let client = node(62, Admission::allow_all(), Duration::ZERO).await;
    // Connect first, so the deadline falls on the call, not the dial.
    let fast = node(63, Admission::allow_all(), Duration::ZERO).await;
    read_index(&client, &fast.peer, T).await.expect("warm-up");
    let started = Instant::now();
    let err = read_index(&client, &server.peer, Duration::from_millis(300)).await.expect_err("slow handler");
    assert!(matches!(err, TransportError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "the caller's deadline bounds the call");
    assert_eq!(server.echo.calls(), 1, "the request did reach the handler");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_closed_binding_stops_serving_and_frees_its_port() {
    trace();
    let mut server = node(71, Admission::allow_all(), Duration::ZERO).await;
    let client = node(72, Admission::allow_all(), Duration::ZERO).await;
    assert_eq!(read_index(&client, &server.peer, T).await.expect("call"), Some(71));
    let addr = server.peer.addr.clone();
    server.binding.close();
    let err = read_index(&client, &server.peer, Duration::from_millis(500)).await.expect_err("closed");
    assert!(matches!(err, TransportError::Unreachable(_) | TransportError::Timeout { .. }), "{err:?}");
    let err = read_index(&server, &client.peer, T).await.expect_err("closed endpoint cannot call out");
    assert!(matches!(err, TransportError::Unreachable(_)), "{err:?}");
    drop(server);
    // The same key restarts on the same port; the caller re-dials.
    let key = NodeKey::from_seed([71; 32]);
    let echo = Echo::new(710, Duration::ZERO);
    let binding = QuicBackend::new(key.clone(), Admission::allow_all())
        .bind(&PeerNode { node: key.node_id(), addr: addr.clone() }, echo.clone())
        .await
        .expect("rebind the same port");
    assert_eq!(binding.addr, addr);
    let peer = PeerNode { node: key.node_id(), addr };
    assert_eq!(read_index(&client, &peer, T).await.expect("restarted"), Some(710));
}

/// A closed endpoint frees its port even while quinn still drains a connection: here a
/// handshake to a peer that never answers, abandoned by its caller, which quinn drains for
/// about 3 s. A node restarting in the same process (a split-brain loser yielding) binds the
/// port again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_a_closed_endpoint_frees_its_port_while_a_handshake_still_drains() {
    trace();
    let key = NodeKey::from_seed([75; 32]);
    let backend = QuicBackend::new(key.clone(), Admission::allow_all())
        .with_config(QuicConfig { close_grace: Duration::ZERO, ..QuicConfig::default() });
    let (_, mut binding) = backend.bind_quic("127.0.0.1:0", Echo::new(75, Duration::ZERO)).await.expect("bind");
    let addr = binding.addr.clone();
    // A peer that swallows every datagram.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("silent socket");
    let to =
        PeerNode { node: NodeKey::from_seed([76; 32]).node_id(), addr: silent.local_addr().expect("addr").to_string() };
    let err = binding
        .transport
        .call(&to, RpcRequest::ReadIndex, Duration::from_millis(200))
        .await
        .expect_err("nobody answers");
    assert!(matches!(err, TransportError::Unreachable(_) | TransportError::Timeout { .. }), "{err:?}");
    binding.close();
    // Free at once, or within a send or receive the endpoint's driver had under way on another
    // thread (it holds the socket for that call): far within the ~3 s drain.
    let freed = Instant::now();
    let again = loop {
        match std::net::UdpSocket::bind(addr.as_str()) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && freed.elapsed() < Duration::from_millis(500) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => break other,
        }
    };
    assert!(again.is_ok(), "the port is free once the binding is closed: {again:?} after {:?}", freed.elapsed());
    drop(again);
    // A new incarnation on the same port serves as usual.
    let (_, rebound) = backend.bind_quic(&addr, Echo::new(77, Duration::ZERO)).await.expect("rebind");
    let client = node(78, Admission::allow_all(), Duration::ZERO).await;
    let peer = PeerNode { node: key.node_id(), addr: rebound.addr.clone() };
    assert_eq!(read_index(&client, &peer, T).await.expect("call"), Some(77));
}

/// A start that fails (its port is taken) keeps the configuration: once the port is free,
/// starting again works, on the same data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_a_failed_start_can_be_retried() {
    trace();
    let root = tempfile::tempdir().expect("tempdir");
    let key = NodeKey::from_seed([79; 32]);
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("take a port");
    let addr = taken.local_addr().expect("addr").to_string();
    let backend = QuicBackend::new(key.clone(), Admission::allow_all())
        .with_config(QuicConfig { bind_patience: Duration::ZERO, ..QuicConfig::default() });
    let s =
        SporeSystem::builder().data_dir(root.path()).key(key).addr(addr.as_str()).network(Arc::new(backend)).build();
    let err = s.start().await.expect_err("the port is taken");
    assert!(
        matches!(&err, mycnet_spores::Error::Transport(TransportError::Bind { addr: a, .. }) if *a == addr),
        "{err:?}"
    );
    assert!(root.path().is_dir(), "a data dir that existed is kept after a failed start");
    drop(taken);
    s.start().await.expect("started on the second try");
    assert_eq!(s.peer().expect("peer").addr, addr);
    s.shutdown().await.expect("shutdown");
}

/// A server with custom limits, bound through `bind_quic`.
pub(crate) async fn limited_server(seed: u8, config: QuicConfig, delay: Duration) -> (PeerNode, Binding, Arc<Echo>) {
    let key = NodeKey::from_seed([seed; 32]);
    let echo = Echo::new(seed as u64, delay);
    let (transport, binding) = QuicBackend::new(key.clone(), Admission::allow_all())
        .with_config(config)
        .bind_quic("127.0.0.1:0", echo.clone())
        .await
        .expect("bind");
    assert_eq!(transport.local_addr().to_string(), binding.addr);
    assert_eq!(transport.node_id(), key.node_id());
    (PeerNode { node: key.node_id(), addr: binding.addr.clone() }, binding, echo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_incoming_connections_are_capped() {
    trace();
    let (server, _binding, echo) =
        limited_server(101, QuicConfig { connections_max: 1, ..QuicConfig::default() }, Duration::ZERO).await;
    let key = NodeKey::from_seed([102; 32]);
    let request = quic::encode_frame(&RpcRequest::ReadIndex).expect("frame");
    let (_ep1, first) = raw_client(&key, &server, ALPN_RAFT).await;
    let first = first.expect("first connection");
    assert_eq!(decode_read_index(&raw_exchange(&first, &request).await.expect("call")), Some(101));
    let (_ep2, second) = raw_client(&key, &server, ALPN_RAFT).await;
    assert!(second.is_err(), "a connection over the cap is refused");
    // Closing the first frees its place.
    first.close(quinn::VarInt::from_u32(0), b"done");
    let (_ep3, third) = crate::wait::ok_async("a connection in the released slot", T, async || {
        let (ep, third) = raw_client(&key, &server, ALPN_RAFT).await;
        third.map(|c| (ep, c))
    })
    .await;
    assert_eq!(decode_read_index(&raw_exchange(&third, &request).await.expect("call")), Some(101));
    assert_eq!(echo.calls(), 2);
}

/// Clients holding every open place do not lock out a peer the node has dialed (as a leader
/// dials its followers): its connections take the reserve. Found with `spore bench --clients
/// 256` against a leader, which refused its own followers' connections (`benches/README.md`,
/// session 26).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_known_peers_get_in_past_a_full_connection_table() {
    trace();
    let config = QuicConfig { connections_max: 1, peer_connections_reserved: 1, ..QuicConfig::default() };
    let (server, binding, _echo) = limited_server(121, config, Duration::ZERO).await;
    let peer = node(122, Admission::allow_all(), Duration::ZERO).await;
    // The server dials the peer, and so knows the address the peer's own connections come from.
    let answer = binding.transport.call(&peer.peer, RpcRequest::ReadIndex, T).await.expect("server to peer");
    assert!(matches!(answer, RpcResponse::ReadIndex(Ok(Some(122)))), "{answer:?}");

    let key = NodeKey::from_seed([123; 32]);
    let request = quic::encode_frame(&RpcRequest::ReadIndex).expect("frame");
    let (_ep1, client) = raw_client(&key, &server, ALPN_RAFT).await;
    let client = client.expect("a client takes the one open place");
    assert_eq!(decode_read_index(&raw_exchange(&client, &request).await.expect("call")), Some(121));
    let (_ep2, second) = raw_client(&key, &server, ALPN_RAFT).await;
    assert!(second.is_err(), "a second client is over the cap");

    // The peer still reaches the server, from the address the server dialed.
    assert_eq!(read_index(&peer, &server, T).await.expect("the peer gets a reserved place"), Some(121));
    // The client's connection was not pushed out to make room.
    assert_eq!(decode_read_index(&raw_exchange(&client, &request).await.expect("call")), Some(121));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_streams_per_connection_are_capped() {
    trace();
    let delay = Duration::from_millis(200);
    let config = QuicConfig { streams_per_connection: 1, ..QuicConfig::default() };
    let (server, _binding, echo) = limited_server(111, config, delay).await;
    let client = node(112, Admission::allow_all(), Duration::ZERO).await;
    read_index(&client, &server, T).await.expect("warm-up");
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let (t, to) = (client.transport.clone(), server.clone());
        calls.spawn(async move { t.call(&to, RpcRequest::ReadIndex, T).await });
    }
    while let Some(r) = calls.join_next().await {
        assert!(matches!(r.expect("task"), Ok(RpcResponse::ReadIndex(Ok(Some(111))))));
    }
    // One stream at a time: the three calls ran one after another.
    assert!(started.elapsed() >= delay * 3, "{:?}", started.elapsed());
    assert_eq!(echo.calls(), 4);
}

/// A UDP relay between one client and a switchable server address: it can "crash" the server
/// (drop everything, including its goodbye) and then point at a new incarnation.
struct Relay {
    addr: String,
    target: Arc<Mutex<Option<std::net::SocketAddr>>>,
    tasks: tokio::task::JoinSet<()>,
}

impl Relay {
    async fn new(target: &str) -> Relay {
        let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("front"));
        let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("back"));
        let target = Arc::new(Mutex::new(Some(target.parse().expect("target"))));
        let client = Arc::new(Mutex::new(None));
        let mut tasks = tokio::task::JoinSet::new();
        let (f, b, t, c) = (front.clone(), back.clone(), target.clone(), client.clone());
        tasks.spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = f.recv_from(&mut buf).await {
                *c.lock().expect("lock") = Some(from);
                let to = *t.lock().expect("lock");
                if let Some(to) = to {
                    let _ = b.send_to(&buf[..n], to).await;
                }
            }
        });
        let (f, b, t, c) = (front.clone(), back, target.clone(), client);
        tasks.spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = b.recv_from(&mut buf).await {
                let (to, client) = (*t.lock().expect("lock"), *c.lock().expect("lock"));
                if let (Some(server), Some(client)) = (to, client) {
                    if server == from {
                        let _ = f.send_to(&buf[..n], client).await;
                    }
                }
            }
        });
        Relay { addr: front.local_addr().expect("addr").to_string(), target, tasks }
    }

    fn point_at(&self, target: Option<&str>) {
        *self.target.lock().expect("lock") = target.map(|t| t.parse().expect("target"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_a_crashed_and_restarted_peer_resets_stale_connections() {
    trace();
    let key = NodeKey::from_seed([121; 32]);
    let backend = QuicBackend::new(key.clone(), Admission::allow_all());
    let old = Echo::new(1, Duration::ZERO);
    let (_, mut old_binding) = backend.bind_quic("127.0.0.1:0", old.clone()).await.expect("bind");
    let relay = Relay::new(&old_binding.addr).await;
    let server = PeerNode { node: key.node_id(), addr: relay.addr.clone() };
    let client = node(122, Admission::allow_all(), Duration::ZERO).await;
    assert_eq!(read_index(&client, &server, T).await.expect("before the crash"), Some(1));

    // Crash: the old incarnation vanishes without a word reaching the caller.
    relay.point_at(None);
    old_binding.close();
    drop(old_binding);
    // It comes back (same key, new socket behind the same relay address).
    let new = Echo::new(2, Duration::ZERO);
    let (_, new_binding) = backend.bind_quic("127.0.0.1:0", new.clone()).await.expect("rebind");
    relay.point_at(Some(&new_binding.addr));

    // The caller's cached connection is stale. The new incarnation answers its packets with a
    // stateless reset (same derived key), so the caller finds out at once and re-dials,
    // instead of waiting out a call timeout and then the idle timeout.
    let started = Instant::now();
    let mut answer = None;
    for _ in 0..3 {
        match read_index(&client, &server, Duration::from_secs(5)).await {
            Ok(n) => {
                answer = n;
                break;
            }
            Err(e) => assert!(!matches!(e, TransportError::Timeout { .. }), "stale connection hung: {e:?}"),
        }
    }
    assert_eq!(answer, Some(2));
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert_eq!(old.calls(), 1);
    drop(relay.tasks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_bind_refuses_a_foreign_node_id() {
    let key = NodeKey::from_seed([81; 32]);
    let other = NodeKey::from_seed([82; 32]).node_id();
    let r = QuicBackend::new(key, Admission::allow_all())
        .bind(&PeerNode { node: other, addr: "127.0.0.1:0".into() }, Echo::new(0, Duration::ZERO))
        .await;
    assert!(r.is_err());
}

// ---------------------------------------------------------------------------------------------
// A SporeSystem cluster over QUIC

pub(crate) struct Voter {
    pub(crate) key: NodeKey,
    pub(crate) dir: std::path::PathBuf,
    pub(crate) addr: String,
    pub(crate) system: Option<SporeSystem>,
}

pub(crate) async fn start_voter(key: &NodeKey, dir: &std::path::Path, addr: &str) -> SporeSystem {
    let s = SporeSystem::builder()
        .data_dir(dir)
        .key(key.clone())
        .addr(addr)
        .network(Arc::new(QuicBackend::new(key.clone(), Admission::allow_all())))
        .timeouts(crate::cluster::fast_timeouts())
        .build();
    s.start().await.expect("start");
    s
}

pub(crate) async fn leader_of(voters: &[Voter], timeout: Duration) -> usize {
    let states = crate::wait::until(
        "a leader (each voter's Raft state)",
        timeout,
        || voters.iter().map(|v| v.system.as_ref().and_then(|s| s.status().ok()).map(|st| st.raft_state)).collect(),
        |states: &Vec<Option<String>>| states.iter().any(|s| s.as_deref() == Some("Leader")),
    )
    .await;
    states.iter().position(|s| s.as_deref() == Some("Leader")).expect("a leader")
}

pub(crate) async fn converged(voters: &[Voter], timeout: Duration) -> mycnet_spores::ChainHead {
    let heads = crate::wait::until(
        "one head on every voter (heads)",
        timeout,
        || voters.iter().map(|v| v.system.as_ref().and_then(|s| s.head().ok().flatten())).collect::<Vec<_>>(),
        |heads| heads[0].is_some() && heads.iter().all(|h| *h == heads[0]),
    )
    .await;
    heads[0].expect("a head")
}

/// Forms a 3-voter network over QUIC on loopback: n0 initializes, admits and adds the others.
pub(crate) async fn form_quic_cluster(root: &std::path::Path, key_base: u8, network: u128) -> Vec<Voter> {
    let mut voters = Vec::new();
    for i in 0..3u8 {
        let key = NodeKey::from_seed([key_base + i; 32]);
        let dir = root.join(format!("n{i}"));
        let system = start_voter(&key, &dir, "127.0.0.1:0").await;
        // Remember the bound address: the restart must come back on the same port.
        let addr = system.peer().expect("peer").addr;
        assert!(addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"), "{addr}");
        voters.push(Voter { key, dir, addr, system: Some(system) });
    }
    let identity = NetworkIdentity {
        network_id: uuid::Uuid::from_u128(network),
        network_name: "quic-test".into(),
        genesis_timestamp: chrono::Utc::now(),
    };
    voters[0].system.as_mut().expect("n0").initialize(identity).await.expect("initialize");
    for i in 1..3 {
        let (ann, peer) = {
            let s = voters[i].system.as_ref().expect("running");
            (s.announcement().expect("announcement"), s.peer().expect("peer"))
        };
        let s0 = voters[0].system.as_ref().expect("n0");
        s0.admit(ann).await.expect("admit");
        s0.add_member(peer, true).await.expect("add voter");
    }
    voters
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_three_voters_replicate_and_survive_a_leader_restart() {
    trace();
    let root = tempfile::tempdir().expect("tempdir");
    let mut voters = form_quic_cluster(root.path(), 90, 0x9_0000).await;

    // A write through a follower is forwarded to the leader over QUIC.
    let leader = leader_of(&voters, Duration::from_secs(5)).await;
    let follower = (leader + 1) % 3;
    let dns = Endpoint { protocol: "udp".into(), address: "127.0.0.1:53".into() };
    voters[follower]
        .system
        .as_ref()
        .expect("follower")
        .register_service("dns", vec![dns], vec!["dns".into()], vec![])
        .await
        .expect("forwarded write");
    let head = converged(&voters, Duration::from_secs(5)).await;
    for v in &voters {
        let s = v.system.as_ref().expect("running");
        assert_eq!(s.status().expect("status").voters.len(), 3);
        assert_eq!(s.services_by_capability("dns").expect("query").len(), 1);
    }

    // Kill the leader: Raft stops, the system (and its binding) is dropped.
    let dead = voters[leader].system.take().expect("leader");
    if let Ok(raft) = dead.raft() {
        let _ = raft.shutdown().await;
    }
    drop(dead);

    // The others elect a new leader and keep taking writes.
    let new_leader = leader_of(&voters, Duration::from_secs(5)).await;
    assert_ne!(new_leader, leader);
    let writer = (0..3).find(|i| *i != leader && *i != new_leader).expect("a follower");
    voters[writer]
        .system
        .as_ref()
        .expect("running")
        .register_service("ntp", vec![], vec!["time".into()], vec![])
        .await
        .expect("write after the leader died");
    let after = voters[new_leader].system.as_ref().expect("running").head().expect("head").expect("some head");
    assert!(after.seq > head.seq);

    // Restart the old leader from its data dir on the same port; everyone converges.
    let v = &voters[leader];
    let restarted = start_voter(&v.key, &v.dir, &v.addr).await;
    assert_eq!(restarted.peer().expect("peer").addr, v.addr, "same port after restart");
    voters[leader].system = Some(restarted);
    let final_head = converged(&voters, Duration::from_secs(10)).await;
    assert!(final_head.seq >= after.seq);
    for v in &voters {
        let s = v.system.as_ref().expect("running");
        assert_eq!(s.head().expect("head"), Some(final_head));
        assert_eq!(s.services_by_capability("time").expect("query").len(), 1);
    }

    for v in voters.iter_mut() {
        if let Some(s) = v.system.take() {
            s.shutdown().await.expect("shutdown");
        }
    }
}

/// `shutdown` returns with the ledger closed: fjall's lock is held while the node runs and
/// free the moment shutdown returns, so the data dir can be copied or moved (a split-brain
/// loser moves its ledger away right after shutting down) or opened again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_shutdown_returns_with_the_ledger_closed() {
    trace();
    let root = tempfile::tempdir().expect("tempdir");
    let mut voters = form_quic_cluster(root.path(), 115, 0x9_0003).await;
    voters[0]
        .system
        .as_ref()
        .expect("n0")
        .register_service("dns", vec![], vec!["dns".into()], vec![])
        .await
        .expect("write");
    converged(&voters, Duration::from_secs(5)).await;
    let try_lock = |dir: &std::path::Path| {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("ledger").join("lock"))
            .expect("fjall's lock file");
        f.try_lock()
    };
    // A subscription nobody reads does not keep the ledger open.
    let unread = voters[0].system.as_ref().expect("n0").subscribe(0).expect("subscribe");
    for v in voters.iter_mut() {
        assert!(matches!(try_lock(&v.dir), Err(std::fs::TryLockError::WouldBlock)), "held while running");
        v.system.take().expect("running").shutdown().await.expect("shutdown");
        assert!(try_lock(&v.dir).is_ok(), "released when shutdown returns");
    }
    drop(unread);
}

/// Many large events written at once must not produce a Raft request larger than one QUIC
/// frame: the proposer bounds its batches by bytes, so followers keep up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_a_burst_of_large_events_replicates_within_the_frame_limit() {
    trace();
    let root = tempfile::tempdir().expect("tempdir");
    let mut voters = form_quic_cluster(root.path(), 110, 0x9_0001).await;
    let leader = leader_of(&voters, Duration::from_secs(5)).await;
    let system = voters[leader].system.take().expect("leader");
    let system = Arc::new(system);
    // ~34 KiB per event (32 metadata entries of 512 + 512 bytes): 600 of them are ~20 MiB,
    // more than one 16 MiB frame if they went out as one entry.
    let metadata: Vec<(String, String)> =
        (0..32).map(|i| (format!("{i:0>512}"), "v".repeat(mycnet_spores::core::limits::METADATA_BYTES_MAX))).collect();
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..600 {
        let system = system.clone();
        let metadata = metadata.clone();
        writers.spawn(async move {
            system.register_service(&format!("big-{w}"), vec![], vec!["big".into()], metadata).await
        });
    }
    while let Some(r) = writers.join_next().await {
        r.expect("join").expect("acknowledged write");
    }
    let system = Arc::into_inner(system).expect("sole owner");
    voters[leader].system = Some(system);
    let head = converged(&voters, Duration::from_secs(30)).await;
    for v in &voters {
        let s = v.system.as_ref().expect("running");
        assert_eq!(s.head().expect("head"), Some(head));
        assert_eq!(s.services_by_capability("big").expect("query").len(), 600);
    }
    for v in voters.iter_mut() {
        if let Some(s) = v.system.take() {
            s.shutdown().await.expect("shutdown");
        }
    }
}

/// A node started the way `spore node` starts it: its own QUIC endpoint, admission fed by the
/// registry and the configured bootstrap peers.
async fn runner_node(root: &std::path::Path, name: &str, init: Option<&str>, join: Option<&PeerNode>) -> SporeSystem {
    use mycnet_spores::node::{self, InitConfig, JoinConfig, NodeConfig};
    let config = NodeConfig {
        data_dir: root.join(name),
        listen: "127.0.0.1:0".into(),
        advertise: None,
        name: Some(name.into()),
        role: node::RoleConfig::Voter,
        capabilities: vec![],
        addresses: vec![],
        init: init.map(|n| InitConfig { network_name: n.into(), network_id: None }),
        join: join.map(|p| JoinConfig {
            via_addr: p.addr.clone(),
            via_key: p.node.to_hex(),
            as_voter: true,
            trust_seed: None,
        }),
        peers: vec![],
        from_seed: None,
        seed_quorum: false,
        write_timeout_ms: Some(2000),
        timeouts: node::TimeoutProfile::Lan,
        ..Default::default()
    };
    node::start_node(&config, None).await.expect("node starts")
}

/// A member of another network (or any key this network never admitted) cannot connect: its
/// join is refused at once, its Raft calls are refused, and nothing changes here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_a_node_of_another_network_cannot_connect_or_join() {
    trace();
    let root = tempfile::tempdir().expect("tempdir");
    let a0 = runner_node(root.path(), "a0", Some("network-a"), None).await;
    let b0 = runner_node(root.path(), "b0", Some("network-b"), None).await;
    let a_peer = a0.peer().expect("peer");
    let a_head = a0.head().expect("head");
    assert_ne!(a0.status().expect("status").fingerprint, b0.status().expect("status").fingerprint);

    let started = Instant::now();
    let err = b0.join(a_peer.clone(), true).await.expect_err("refused");
    assert!(matches!(err, mycnet_spores::Error::Transport(TransportError::Refused { .. })), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "refused at once, not after retries: {:?}", started.elapsed());
    assert_eq!(a0.head().expect("head"), a_head, "nothing was written in network A");
    assert_eq!(a0.nodes().expect("nodes").len(), 1);
    assert_eq!(a0.status().expect("status").voters.len(), 1);

    // Reads are public, writes are not: the admin protocol answers, Raft refuses.
    let (key, _) =
        quic::admin_call(&a_peer.addr, Some(a_peer.node), RpcRequest::Status, T).await.expect("status is readable");
    assert_eq!(key, a_peer.node);
    a0.shutdown().await.expect("shutdown");
    b0.shutdown().await.expect("shutdown");
}

/// A running node writes a seed on request of its own key only; any other key, even an
/// admitted one, is refused and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_only_the_nodes_own_key_may_ask_it_to_export_a_seed() {
    trace();
    let root = tempfile::tempdir().expect("tempdir");
    let mut voters = form_quic_cluster(root.path(), 130, 0x9_0002).await;
    let v = &voters[1];
    let target = root.path().join("v1.seed");
    let ask = |key: NodeKey, include_events: bool| {
        let addr = v.addr.clone();
        let path = target.display().to_string();
        async move {
            let req = RpcRequest::ExportSeed { path, include_events };
            quic::call_once(&key, &addr, None, ALPN_RAFT, req, T).await.expect("the call itself goes through")
        }
    };
    let (_, resp) = ask(NodeKey::from_seed([140; 32]), true).await;
    assert!(matches!(resp, RpcResponse::ExportSeed(Err(_))), "{resp:?}");
    assert!(!target.exists());
    let (_, resp) = ask(v.key.clone(), true).await;
    let RpcResponse::ExportSeed(Ok(head)) = resp else { panic!("{resp:?}") };
    let seed = mycnet_spores::seed::read_file(&target, mycnet_spores::seed::VerifyPolicy::default()).expect("verifies");
    assert_eq!((seed.header.head_seq, seed.header.head_hash), (head.seq, head.hash));
    assert_eq!(seed.signers, vec![v.key.node_id()]);
    for v in voters.iter_mut() {
        if let Some(s) = v.system.take() {
            s.shutdown().await.expect("shutdown");
        }
    }
}
