//! Forged source addresses hold no connection places: once half of a node's places are in use,
//! a connection from an address not yet proven is sent a QUIC Retry, and only a sender that
//! receives at that address gets a place.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mycnet_spores::net::quic::{self, QuicConfig, ALPN_RAFT};
use mycnet_spores::raft::RpcRequest;
use mycnet_spores::{NodeKey, PeerNode};

use crate::quic::{decode_read_index, limited_server, raw_client, raw_exchange, trace};

/// A relay that carries one client's packets to the server and drops every answer: to the
/// server, a sender at the relay's address that never hears back, as a forged source address
/// looks. It counts the answers it dropped, and how many were Retry packets.
struct OneWay {
    addr: SocketAddr,
    answers: Arc<AtomicUsize>,
    retries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl OneWay {
    async fn to(server: &str) -> OneWay {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("relay socket");
        let server: SocketAddr = server.parse().expect("server addr");
        let (answers, retries) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let addr = socket.local_addr().expect("relay addr");
        let (a, r) = (answers.clone(), retries.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                if from != server {
                    let _ = socket.send_to(&buf[..n], server).await;
                    continue;
                }
                a.fetch_add(1, Ordering::SeqCst);
                // A QUIC v1 long header whose packet type is 3: a Retry.
                if n > 0 && buf[0] & 0x80 != 0 && (buf[0] >> 4) & 0x3 == 3 {
                    r.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        OneWay { addr, answers, retries, task }
    }
}

/// A client that starts a handshake with `server` through a one-way relay and never completes
/// it (its task ends when the endpoint is dropped).
async fn forged(key: &NodeKey, server: &PeerNode) -> (OneWay, quinn::Endpoint) {
    let relay = OneWay::to(&server.addr).await;
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    let cfg = quic::client_config(key, server.node, ALPN_RAFT).expect("client config");
    let connecting = ep.connect_with(cfg, relay.addr, "spores").expect("connect");
    tokio::spawn(async move {
        let _ = connecting.await;
    });
    // The server has answered (a handshake, or a Retry) once the relay drops an answer.
    let answers = relay.answers.clone();
    crate::wait::some("the server's answer to a forged sender", T, || {
        (answers.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    (relay, ep)
}

const T: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_forged_senders_hold_no_places_once_they_are_crowded() {
    trace();
    // Handshakes that never finish hold their places for a minute unless Retry keeps them out.
    let config = QuicConfig {
        connections_max: 2,
        peer_connections_reserved: 0,
        handshake_deadline: Duration::from_secs(60),
        ..QuicConfig::default()
    };
    let (server, _binding, echo) = limited_server(131, config, Duration::ZERO).await;
    let key = NodeKey::from_seed([132; 32]);

    // The first forged sender finds the places free and gets one: its handshake is answered.
    let (first, _ep1) = forged(&key, &server).await;
    assert_eq!(first.retries.load(Ordering::SeqCst), 0, "no Retry while places are free");
    // The second finds half of them in use: it is asked to prove its address, and never does.
    let (second, _ep2) = forged(&key, &server).await;
    assert!(second.retries.load(Ordering::SeqCst) > 0, "a Retry for an unproven address once crowded");

    // A real client proves its address by answering the Retry, and gets the place left.
    let (_ep, client) = raw_client(&key, &server, ALPN_RAFT).await;
    let client = client.expect("a real client gets the place the forged sender did not hold");
    let request = quic::encode_frame(&RpcRequest::ReadIndex).expect("frame");
    assert_eq!(decode_read_index(&raw_exchange(&client, &request).await.expect("call")), Some(131));
    assert_eq!(echo.calls(), 1);
    // Now every place is taken (the first forged handshake and the client): the next real
    // client proves its address too, and is refused for want of a place.
    let (_ep3, over) = raw_client(&key, &server, ALPN_RAFT).await;
    assert!(over.is_err(), "over the limit");
    first.task.abort();
    second.task.abort();
}
