//! The endpoint's setup: binding its UDP socket (with patience for a port still in use),
//! quinn's transport limits, the stateless-reset key and connection ids that let a restarted
//! node reset its predecessor's connections, and what a connection says about its peer.

use std::net::SocketAddr;
use std::time::Duration;

use quinn::VarInt;

use super::{tls, QuicConfig};
use crate::core::keys::NodeKey;
use crate::core::types::NodeId;
use crate::net::TransportError;

/// Connection-level receive window (bounds buffered data per connection).
const RECEIVE_WINDOW: u32 = 32 * 1024 * 1024;
/// Stream-level receive window.
const STREAM_RECEIVE_WINDOW: u32 = 4 * 1024 * 1024;
/// Datagrams buffered per server connection before the oldest are dropped.
const DATAGRAM_BUFFER_BYTES: usize = 64 * 1024;
/// Largest UDP payload path MTU discovery searches for: the most UDP allows. quinn's default
/// (1452) keeps every packet within Ethernet's MTU even where the path carries more (loopback,
/// jumbo frames); its search is a binary one and lost probes are not taken for congestion, so
/// a path of 1500 bytes ends at 1452 as before, after a few more probes.
const MTU_UPPER_BOUND: u16 = 65_527;

pub(super) fn bind_err(addr: &str, e: impl std::fmt::Display) -> TransportError {
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

pub(super) async fn resolve(addr: &str) -> std::io::Result<SocketAddr> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{addr} resolves to no address")))
}

/// The UDP buffers asked of the kernel for an endpoint's socket, each way (Linux grants at most
/// `net.core.rmem_max` / `wmem_max`). The default, ~208 KiB, overflowed when 256 clients
/// connected at once (`spore bench --clients 256`: 878 datagrams dropped in one run, the
/// `RcvbufErrors` of `/proc/net/snmp`; each lost handshake packet costs its client a retry
/// about a second later).
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Asks for [`SOCKET_BUFFER_BYTES`] of receive and send buffer; a refusal only leaves the
/// default, so it is logged, not returned.
fn widen_buffers(socket: &std::net::UdpSocket) {
    use rustix::net::sockopt;
    if let Err(e) = sockopt::set_socket_recv_buffer_size(socket, SOCKET_BUFFER_BYTES) {
        tracing::debug!(error = %e, "could not widen the UDP receive buffer");
    }
    if let Err(e) = sockopt::set_socket_send_buffer_size(socket, SOCKET_BUFFER_BYTES) {
        tracing::debug!(error = %e, "could not widen the UDP send buffer");
    }
    tracing::debug!(
        receive = ?sockopt::socket_recv_buffer_size(socket).ok(),
        send = ?sockopt::socket_send_buffer_size(socket).ok(),
        "UDP buffers"
    );
}

pub(super) async fn bind_socket(addr: SocketAddr, patience: Duration) -> std::io::Result<std::net::UdpSocket> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match std::net::UdpSocket::bind(addr) {
            Ok(s) => {
                widen_buffers(&s);
                return Ok(s);
            }
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

pub(super) fn transport_config(cfg: &QuicConfig, server: bool) -> Result<quinn::TransportConfig, TransportError> {
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
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MTU_UPPER_BOUND);
    t.mtu_discovery_config(Some(mtu));
    Ok(t)
}

/// The stateless-reset key, derived from the node key so that a restarted node can reset the
/// connections of its previous incarnation (peers then re-dial at once).
pub(super) struct ResetKey([u8; 32]);

impl ResetKey {
    pub(super) fn derive(key: &NodeKey) -> Self {
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
pub(super) struct RandomCids;

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
pub(super) fn peer_node_id(conn: &quinn::Connection) -> Option<NodeId> {
    let chain = conn.peer_identity()?.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    tls::node_id_from_chain(&chain)
}

/// The ALPN negotiated on `conn`.
pub(super) fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?.downcast::<quinn::crypto::rustls::HandshakeData>().ok()?.protocol
}

pub(super) fn close(conn: &quinn::Connection, code: u32, reason: &str) {
    conn.close(VarInt::from_u32(code), reason.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An endpoint's socket gets the buffers asked for, as far as the kernel allows
    /// (`net.core.rmem_max`; Linux reports twice what it granted). Where that limit is below
    /// the default buffer, there is nothing to widen and this checks nothing more.
    #[tokio::test]
    async fn endpoint_sockets_get_wide_udp_buffers() {
        let s = bind_socket(([127, 0, 0, 1], 0).into(), Duration::ZERO).await.expect("bind");
        let allowed = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|t| t.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let granted = rustix::net::sockopt::socket_recv_buffer_size(&s).expect("read SO_RCVBUF");
        assert!(granted >= SOCKET_BUFFER_BYTES.min(allowed), "granted {granted}, rmem_max {allowed}");
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

    /// On loopback, whose MTU is 64 KiB, a connection made with our transport settings finds a
    /// path MTU past quinn's default bound of 1452 bytes: a Raft entry then crosses in a few
    /// packets, not dozens.
    #[tokio::test]
    async fn the_path_mtu_search_goes_past_ethernet_s_on_loopback() -> Result<(), Box<dyn std::error::Error>> {
        use super::super::tls::Identity;
        use std::sync::Arc;
        let cfg = QuicConfig::default();
        let (server_key, client_key) = (NodeKey::from_seed([1; 32]), NodeKey::from_seed([2; 32]));
        let mut server_cfg =
            quinn::ServerConfig::with_crypto(Arc::new(Identity::new(&server_key)?.server_config(&[b"t"])?));
        server_cfg.transport_config(Arc::new(transport_config(&cfg, true)?));
        let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse()?)?;
        let mut client_cfg = quinn::ClientConfig::new(Arc::new(
            Identity::new(&client_key)?.client_config(Some(server_key.node_id()), b"t")?,
        ));
        client_cfg.transport_config(Arc::new(transport_config(&cfg, false)?));
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        client.set_default_client_config(client_cfg);
        let addr = server.local_addr()?;
        let accept = tokio::spawn(async move {
            let conn = server.accept().await?.await.ok()?;
            let (mut send, mut recv) = conn.accept_bi().await.ok()?;
            let got = recv.read_to_end(1 << 20).await.ok()?;
            send.write_all(&[1]).await.ok()?;
            send.finish().ok()?;
            conn.closed().await;
            Some(got.len())
        });
        let conn = client.connect(addr, "spores")?.await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&vec![7u8; 64 * 1024]).await?;
        send.finish()?;
        recv.read_to_end(16).await?;
        // The search runs beside the traffic, a probe per round trip: bounded wait for it.
        let mut mtu = conn.stats().path.current_mtu;
        for _ in 0..200 {
            if mtu > 1452 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            mtu = conn.stats().path.current_mtu;
        }
        conn.close(0u32.into(), b"done");
        assert!(mtu > 1452, "path MTU on loopback stayed at {mtu}");
        assert_eq!(accept.await?, Some(64 * 1024));
        Ok(())
    }
}
