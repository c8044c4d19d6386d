//! Append streams (replication's pipelined AppendEntries) over QUIC and over the in-process
//! network: requests go out without waiting for answers, answers come back in order, a
//! request not answered in time breaks the stream, and bad or unadmitted traffic is cut off as
//! it is for calls. A peer's Raft requests of the wrong shape are refused before openraft sees
//! them (`raft::inbound`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use mycnet_spores::net::inproc::InProcNetwork;
use mycnet_spores::net::quic::{self, Admission, QuicBackend, ALPN_RAFT};
use mycnet_spores::net::{AppendAnswers, AppendRequests, BoxFuture, NetworkBackend, RpcHandler, TransportError};
use mycnet_spores::raft::{AppendReply, AppendRequest, LogId, RpcRequest, RpcResponse};
use mycnet_spores::wire::rpc::RemoteFailure;
use mycnet_spores::{NodeId, NodeKey, PeerNode};
use openraft::impls::leader_id_adv::LeaderId;

use crate::quic::{closed_with_bad_frame, raw_client, trace};

const T: Duration = Duration::from_secs(3);

fn log_id(index: u64) -> LogId {
    LogId::new(LeaderId { term: 2, node_id: 1 }, index)
}

/// An entry-less request whose previous entry is `index` (a heartbeat carrying a commit), from
/// a leader of term 0: below any real term, so a real Raft answers it without changing.
pub(crate) fn request(index: u64) -> AppendRequest {
    AppendRequest {
        vote: openraft::impls::Vote::new_committed(0, 1),
        prev_log_id: Some(log_id(index)),
        leader_commit: None,
        entries: vec![],
    }
}

/// What the peer of these tests does with an append stream.
#[derive(Clone, Copy)]
enum Peer {
    /// Takes `n` requests before it answers any, then answers each with its `prev_log_id`, in
    /// order, and ends: a caller that waited for an answer before its next request would wait
    /// forever.
    AnswerAfter(usize),
    /// Takes requests and never answers.
    Silent,
    /// Answers every request twice: a peer that breaks the protocol.
    Twice,
}

struct StreamPeer {
    behaviour: Peer,
    received: Arc<AtomicUsize>,
}

impl RpcHandler for StreamPeer {
    fn handle(&self, _: NodeId, _: RpcRequest) -> BoxFuture<'_, RpcResponse> {
        Box::pin(async { RpcResponse::ReadIndex(Err(RemoteFailure::Other("calls are not served here".into()))) })
    }

    fn append_stream(&self, _: NodeId, requests: AppendRequests) -> AppendAnswers {
        let received = self.received.clone();
        let requests = requests.inspect(move |_| {
            received.fetch_add(1, Ordering::SeqCst);
        });
        match self.behaviour {
            Peer::AnswerAfter(n) => Box::pin(
                requests
                    .take(n)
                    .collect::<Vec<_>>()
                    .into_stream()
                    .flat_map(|all| futures_util::stream::iter(all.into_iter().map(|r| Ok(Ok(r.prev_log_id))))),
            ),
            Peer::Silent => Box::pin(requests.filter_map(|_| std::future::ready(None::<AppendReply>))),
            Peer::Twice => Box::pin(
                requests.flat_map(|r| futures_util::stream::iter([Ok(Ok(r.prev_log_id)), Ok(Ok(r.prev_log_id))])),
            ),
        }
    }
}

struct QuicPair {
    client: mycnet_spores::net::SharedTransport,
    server: PeerNode,
    received: Arc<AtomicUsize>,
    admission: Admission,
    client_key: NodeKey,
    _bindings: [mycnet_spores::net::Binding; 2],
}

async fn quic_pair(seed: u8, behaviour: Peer) -> QuicPair {
    let (server_key, client_key) = (NodeKey::from_seed([seed; 32]), NodeKey::from_seed([seed + 1; 32]));
    let admission = Admission::only([client_key.node_id()]);
    let received = Arc::new(AtomicUsize::new(0));
    let peer = Arc::new(StreamPeer { behaviour, received: received.clone() });
    let server = QuicBackend::new(server_key.clone(), admission.clone())
        .bind(&PeerNode { node: server_key.node_id(), addr: "127.0.0.1:0".into() }, peer)
        .await
        .expect("bind the server");
    let client = QuicBackend::new(client_key.clone(), Admission::allow_all())
        .bind(
            &PeerNode { node: client_key.node_id(), addr: "127.0.0.1:0".into() },
            Arc::new(StreamPeer { behaviour, received: Arc::default() }),
        )
        .await
        .expect("bind the client");
    QuicPair {
        client: client.transport.clone(),
        server: PeerNode { node: server_key.node_id(), addr: server.addr.clone() },
        received,
        admission,
        client_key,
        _bindings: [server, client],
    }
}

fn prevs(answers: Vec<Result<AppendReply, TransportError>>) -> Vec<Option<LogId>> {
    answers
        .into_iter()
        .map(|a| match a {
            Ok(Ok(Ok(prev))) => prev,
            other => panic!("expected an answer, got {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_append_streams_send_without_waiting_and_answer_in_order() {
    trace();
    let pair = quic_pair(71, Peer::AnswerAfter(8)).await;
    assert!(pair.client.streams_appends());
    let requests = futures_util::stream::iter((1..=8).map(request));
    let answers = pair.client.append_stream(&pair.server, Box::pin(requests), T).await.expect("stream opened");
    let answers: Vec<_> = tokio::time::timeout(T * 2, answers.collect()).await.expect("every answer in time");
    assert_eq!(prevs(answers), (1..=8).map(|i| Some(log_id(i))).collect::<Vec<_>>());
    assert_eq!(pair.received.load(Ordering::SeqCst), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_an_unanswered_append_stream_breaks_at_its_deadline() {
    trace();
    let pair = quic_pair(73, Peer::Silent).await;
    // The requests never end: the stream is broken by the deadline, not by their end.
    let requests = futures_util::stream::iter((1..=3).map(request)).chain(futures_util::stream::pending());
    let floor = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let mut answers = pair.client.append_stream(&pair.server, Box::pin(requests), floor).await.expect("opened");
    let first = tokio::time::timeout(T * 4, answers.next()).await.expect("the stream breaks in time");
    assert!(matches!(first, Some(Err(TransportError::Timeout { .. }))), "{first:?}");
    assert!(started.elapsed() >= floor, "not before the deadline: {:?}", started.elapsed());
    assert!(answers.next().await.is_none(), "nothing after the error");
    assert_eq!(pair.received.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_an_answer_to_no_request_breaks_the_stream() {
    trace();
    let pair = quic_pair(85, Peer::Twice).await;
    let requests = futures_util::stream::iter([request(1)]).chain(futures_util::stream::pending());
    let answers = pair.client.append_stream(&pair.server, Box::pin(requests), T).await.expect("opened");
    let answers: Vec<_> = tokio::time::timeout(T * 2, answers.collect()).await.expect("the stream ends in time");
    assert!(
        matches!(answers.as_slice(), [Ok(Ok(Ok(_))), Err(TransportError::UnexpectedResponse(_))]),
        "the first answer, then the protocol error: {answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_a_key_revoked_mid_stream_is_cut_off_at_its_next_request() {
    trace();
    let pair = quic_pair(75, Peer::AnswerAfter(usize::MAX)).await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let requests = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut answers = pair.client.append_stream(&pair.server, Box::pin(requests), T).await.expect("opened");
    tx.send(request(1)).await.expect("send");
    crate::wait::until("the peer took the first request", T, || pair.received.load(Ordering::SeqCst), |n| *n == 1)
        .await;
    pair.admission.revoke(&pair.client_key.node_id());
    tx.send(request(2)).await.expect("send");
    let broken = tokio::time::timeout(T * 2, answers.next()).await.expect("the stream breaks in time");
    assert!(matches!(broken, Some(Err(TransportError::Refused { .. }))), "{broken:?}");
    assert_eq!(pair.received.load(Ordering::SeqCst), 1, "nothing after the revocation reached the handler");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_a_bad_frame_in_an_append_stream_closes_its_connection() {
    trace();
    let pair = quic_pair(77, Peer::AnswerAfter(usize::MAX)).await;
    let (_ep, conn) = raw_client(&pair.client_key, &pair.server, ALPN_RAFT).await;
    let conn = conn.expect("connect");
    let (mut send, _recv) = conn.open_bi().await.expect("stream");
    send.write_all(&quic::encode_frame(&RpcRequest::AppendStream).expect("opener")).await.expect("open");
    send.write_all(&quic::encode_frame(&request(1)).expect("request")).await.expect("a good request");
    let mut junk = 8u32.to_be_bytes().to_vec();
    junk.extend_from_slice(&[0xff; 8]);
    send.write_all(&junk).await.expect("junk sent");
    closed_with_bad_frame(&conn).await;
    assert_eq!(pair.received.load(Ordering::SeqCst), 1, "the junk never reached the handler");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_stream_to_a_node_without_raft_answers_that_it_is_stopped() {
    trace();
    // A handler that serves no Raft (the default), over QUIC.
    struct NoRaft;
    impl RpcHandler for NoRaft {
        fn handle(&self, _: NodeId, _: RpcRequest) -> BoxFuture<'_, RpcResponse> {
            Box::pin(async { RpcResponse::ReadIndex(Ok(None)) })
        }
    }
    let (server_key, client_key) = (NodeKey::from_seed([79; 32]), NodeKey::from_seed([80; 32]));
    let server = QuicBackend::new(server_key.clone(), Admission::allow_all())
        .bind(&PeerNode { node: server_key.node_id(), addr: "127.0.0.1:0".into() }, Arc::new(NoRaft))
        .await
        .expect("bind");
    let client = QuicBackend::new(client_key.clone(), Admission::allow_all())
        .bind(&PeerNode { node: client_key.node_id(), addr: "127.0.0.1:0".into() }, Arc::new(NoRaft))
        .await
        .expect("bind");
    let to = PeerNode { node: server_key.node_id(), addr: server.addr.clone() };
    // Several requests: the node stops reading after the first, and its answer must reach the
    // caller rather than an error about the requests it did not read.
    let requests = futures_util::stream::iter((1..=8).map(request)).then(|r| async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        r
    });
    let answers = client.transport.append_stream(&to, Box::pin(requests), T).await;
    let answers: Vec<_> = answers.expect("opened").collect().await;
    assert!(matches!(answers.as_slice(), [Ok(Err(openraft::error::Fatal::Stopped))]), "{answers:?}");
}

/// In process: the same pipelining, and a partition breaks an open stream at its next
/// request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inproc_append_streams_pipeline_and_break_when_partitioned() {
    let net = InProcNetwork::new(7);
    let received = Arc::new(AtomicUsize::new(0));
    let (a, b) = (NodeKey::from_seed([81; 32]).node_id(), NodeKey::from_seed([82; 32]).node_id());
    let peer = Arc::new(StreamPeer { behaviour: Peer::AnswerAfter(usize::MAX), received: received.clone() });
    let _client = net.bind(&PeerNode { node: a, addr: "a".into() }, peer.clone()).await.expect("bind a");
    let _server = net.bind(&PeerNode { node: b, addr: "b".into() }, peer).await.expect("bind b");
    let transport = net.transport("a");
    let to = PeerNode { node: b, addr: "b".into() };
    use mycnet_spores::net::Transport;
    assert!(transport.streams_appends());

    // A peer that answers only after 4 requests: all 4 went out unanswered.
    let quorum = Arc::new(StreamPeer { behaviour: Peer::AnswerAfter(4), received: Arc::default() });
    let _c = net.bind(&PeerNode { node: NodeKey::from_seed([83; 32]).node_id(), addr: "c".into() }, quorum).await;
    let c = PeerNode { node: NodeKey::from_seed([83; 32]).node_id(), addr: "c".into() };
    let answers = transport.append_stream(&c, Box::pin(futures_util::stream::iter((1..=4).map(request))), T).await;
    let answers: Vec<_> = tokio::time::timeout(T * 2, answers.expect("opened").collect()).await.expect("in time");
    assert_eq!(prevs(answers), (1..=4).map(|i| Some(log_id(i))).collect::<Vec<_>>());

    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let requests = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut answers = transport.append_stream(&to, Box::pin(requests), T).await.expect("opened");
    net.partition(&["a"], &["b"]);
    tx.send(request(1)).await.expect("send");
    let broken = tokio::time::timeout(T * 2, answers.next()).await.expect("the stream breaks in time");
    assert!(matches!(broken, Some(Err(TransportError::Unreachable(_)))), "{broken:?}");
    assert_eq!(received.load(Ordering::SeqCst), 0, "nothing crossed the partition");
}

/// A silent peer bound as "probe" beside the cluster's one node, with the key drawn from
/// `seed`: its binding (keep it while probing) and the node it probes.
async fn probe(c: &crate::cluster::Cluster, seed: u8) -> (mycnet_spores::net::Binding, PeerNode) {
    let prober = NodeKey::from_seed([seed; 32]).node_id();
    let peer = Arc::new(StreamPeer { behaviour: Peer::Silent, received: Arc::default() });
    let binding = c.net.bind(&PeerNode { node: prober, addr: "probe".into() }, peer).await.expect("bind");
    (binding, c.sys(0).peer().expect("peer"))
}

/// A chunk of snapshot `id` from a leader of term 0: `data` at `offset`, not the last.
fn snapshot_chunk(
    id: &str,
    offset: u64,
    data: Vec<u8>,
) -> openraft_legacy::network_v1::InstallSnapshotRequest<mycnet_spores::raft::TypeConfig> {
    openraft_legacy::network_v1::InstallSnapshotRequest {
        vote: openraft::impls::Vote::new_committed(0, 1),
        meta: openraft_legacy::network_v1::SnapshotMeta {
            last_log_id: None,
            last_membership: Default::default(),
            snapshot_id: id.into(),
        },
        offset,
        data,
        done: false,
    }
}

/// A peer's AppendEntries of the wrong shape (a candidate's vote, not a leader's) is refused
/// before openraft sees it, on a stream and as a call: the node's Raft keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_append_is_refused_and_the_raft_keeps_running() {
    use mycnet_spores::net::Transport;
    let c = crate::cluster::Cluster::form(1, 0xa99).await;
    c.sys(0).register_service("before", vec![], vec![], vec![]).await.expect("a write before");
    let (_probe, to) = probe(&c, 87).await;
    let mut forged = request(1);
    forged.vote = openraft::impls::Vote::new(9, 1);
    let transport = c.net.transport("probe");
    let answers = transport.append_stream(&to, Box::pin(futures_util::stream::iter([forged.clone()])), T).await;
    let answers: Vec<_> = tokio::time::timeout(T * 2, answers.expect("opened").collect()).await.expect("in time");
    assert!(matches!(answers.as_slice(), [Err(TransportError::Unreachable(_))]), "left unanswered: {answers:?}");
    let call = transport.call(&to, RpcRequest::AppendEntries(forged), T).await.expect("answered");
    assert!(matches!(call, RpcResponse::Status(Err(RemoteFailure::Other(_)))), "refused: {call:?}");
    c.sys(0).register_service("after", vec![], vec![], vec![]).await.expect("the Raft still commits");
    assert_eq!(c.sys(0).services_by_name("after").expect("query").len(), 1);
}

/// A snapshot chunk far past the bytes received of its snapshot is refused: openraft-legacy's
/// receiver would write it there, allocating the gap in memory (a terabyte here, which aborts
/// the process). The node keeps committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_chunk_far_past_the_bytes_received_is_refused() {
    use mycnet_spores::net::Transport;
    let c = crate::cluster::Cluster::form(1, 0xa9a).await;
    let (_probe, to) = probe(&c, 89).await;
    let transport = c.net.transport("probe");
    let first = snapshot_chunk("probe-1", 0, vec![1, 2, 3]);
    let far = snapshot_chunk("probe-1", 1 << 40, vec![0]);
    let answer = transport.call(&to, RpcRequest::InstallSnapshot(first), T).await.expect("answered");
    assert!(matches!(answer, RpcResponse::InstallSnapshot(_)), "the first chunk is taken: {answer:?}");
    let answer = transport.call(&to, RpcRequest::InstallSnapshot(far), T).await.expect("answered");
    assert!(matches!(answer, RpcResponse::Status(Err(RemoteFailure::Other(_)))), "refused: {answer:?}");
    c.sys(0).register_service("after", vec![], vec![], vec![]).await.expect("the Raft still commits");
}

/// A snapshot larger than the node's bound (`Timeouts::snapshot_bytes_max`, a quarter of the
/// memory by default) is refused chunk by chunk, with an error naming the bound, however its
/// chunks follow each other; the node keeps committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_past_the_nodes_bound_is_refused() {
    use mycnet_spores::net::Transport;
    let t = mycnet_spores::Timeouts { snapshot_bytes_max: 1000, ..crate::cluster::fast_timeouts() };
    let c = crate::cluster::Cluster::form_with(1, 0xa9b, t).await;
    let (_probe, to) = probe(&c, 88).await;
    let transport = c.net.transport("probe");
    let chunk = |offset: u64| snapshot_chunk("big", offset, vec![7; 400]);
    for offset in [0, 400] {
        let answer = transport.call(&to, RpcRequest::InstallSnapshot(chunk(offset)), T).await.expect("answered");
        assert!(matches!(answer, RpcResponse::InstallSnapshot(_)), "within the bound: {answer:?}");
    }
    let answer = transport.call(&to, RpcRequest::InstallSnapshot(chunk(800)), T).await.expect("answered");
    match answer {
        RpcResponse::Status(Err(RemoteFailure::Other(why))) => {
            assert!(why.contains("more than 1000 bytes") && why.contains("snapshot_bytes_max"), "{why}")
        }
        other => panic!("refused past the bound, got {other:?}"),
    }
    c.sys(0).register_service("after", vec![], vec![], vec![]).await.expect("the Raft still commits");
}
