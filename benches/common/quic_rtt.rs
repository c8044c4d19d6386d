//! A raw limit for the QUIC figures: the round trip of a small message over one quinn stream
//! on loopback, with nothing of ours in it — what any replication round over QUIC pays at
//! least once on a write's critical path (the leader's AppendEntries and its answer).
// Each bench includes this module and uses the helpers it needs.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes each way per round trip: about one small AppendEntries request of one event.
const MESSAGE_BYTES: usize = 512;

/// The median round trip of `rounds` messages of [`MESSAGE_BYTES`] echoed over one
/// bidirectional quinn stream between two endpoints on 127.0.0.1 (a self-signed certificate
/// the client trusts), on the calling runtime, after `rounds / 10` rounds of warm-up.
pub async fn raw_quic_round_trip(rounds: usize) -> Duration {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("certificate");
    let cert_der = cert.cert.der().clone();
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let server_config = quinn::ServerConfig::with_single_cert(vec![cert_der.clone()], key_der).expect("server config");
    let server = quinn::Endpoint::server(server_config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("server");
    let server_addr = server.local_addr().expect("server address");
    let echo = tokio::spawn(async move {
        let conn = server.accept().await.expect("incoming").await.expect("connection");
        let (mut send, mut recv) = conn.accept_bi().await.expect("stream");
        let mut buf = vec![0u8; MESSAGE_BYTES];
        while recv.read_exact(&mut buf).await.is_ok() {
            send.write_all(&buf).await.expect("echo");
        }
        drop(conn);
        server.wait_idle().await;
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).expect("root");
    let client_config = quinn::ClientConfig::with_root_certificates(Arc::new(roots)).expect("client config");
    let mut client = quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("client");
    client.set_default_client_config(client_config);
    let conn = client.connect(server_addr, "localhost").expect("connect").await.expect("connection");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    let (msg, mut back) = (vec![7u8; MESSAGE_BYTES], vec![0u8; MESSAGE_BYTES]);
    let mut times = Vec::with_capacity(rounds);
    for i in 0..rounds + rounds / 10 {
        let t = Instant::now();
        send.write_all(&msg).await.expect("send");
        recv.read_exact(&mut back).await.expect("echoed");
        if i >= rounds / 10 {
            times.push(t.elapsed());
        }
    }
    send.finish().expect("finish");
    conn.close(0u32.into(), b"done");
    client.wait_idle().await;
    let _ = echo.await;
    times.sort();
    times[times.len() / 2]
}
