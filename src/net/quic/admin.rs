//! A kept connection to one node's read-only admin protocol ([`ALPN_ADMIN`]), from a
//! throw-away key: for a client that asks the same node again and again — a watch's chain of
//! blocking queries — without a handshake, and a connection's drain, per call. The same kept
//! connection as an admitted node's key over [`ALPN_RAFT`] ([`AdminClient::as_member`]) carries
//! a tool's many forwarded writes (`spore bench`).

use std::sync::Arc;
use std::time::Duration;

use quinn::Endpoint;

use super::client::{classify, exchange, SERVER_NAME};
use super::endpoint::{close, resolve, transport_config};
use super::{close_code, tls, QuicConfig, ALPN_ADMIN, ALPN_RAFT};
use crate::core::keys::NodeKey;
use crate::core::types::NodeId;
use crate::net::TransportError;
use crate::raft::{RpcRequest, RpcResponse};

/// A client of one node's admin protocol. It connects on the first call and again after a
/// failed one; each call is one stream on the kept connection.
pub struct AdminClient {
    addr: String,
    expected: Option<NodeId>,
    key: NodeKey,
    alpn: &'static [u8],
    conn: Option<(Endpoint, quinn::Connection)>,
}

impl AdminClient {
    /// For the node at `addr` (`HOST:PORT`), refused unless it proves `expected` (if given).
    pub fn new(addr: impl Into<String>, expected: Option<NodeId>) -> Result<Self, TransportError> {
        let addr = addr.into();
        let key = NodeKey::generate().map_err(|e| TransportError::Unreachable(format!("{addr} (no key: {e})")))?;
        Ok(AdminClient { addr, expected, key, alpn: ALPN_ADMIN, conn: None })
    }

    /// For the node at `addr`, as `key` over the Raft protocol ([`ALPN_RAFT`]): the node
    /// serves it only to keys it admits, and takes forwarded writes (`RpcRequest::Forward`)
    /// on it. Each call is one stream on the kept connection.
    pub fn as_member(addr: impl Into<String>, key: NodeKey) -> Self {
        AdminClient { addr: addr.into(), expected: None, key, alpn: ALPN_RAFT, conn: None }
    }

    /// For the node at `addr`, as `key` (a node whose admin reads are not open admits only
    /// some keys, [`super::AdminReads`]).
    pub fn with_key(addr: impl Into<String>, expected: Option<NodeId>, key: NodeKey) -> Self {
        AdminClient { addr: addr.into(), expected, key, alpn: ALPN_ADMIN, conn: None }
    }

    /// The node's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn connect(&mut self) -> Result<quinn::Connection, TransportError> {
        if let Some((_, conn)) = &self.conn {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        let addr = self.addr.clone();
        let unreachable = |e: &dyn std::fmt::Display| TransportError::Unreachable(format!("{addr} ({e})"));
        let remote = resolve(&addr).await.map_err(|e| unreachable(&e))?;
        let local: std::net::SocketAddr =
            if remote.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
        let endpoint = Endpoint::client(local).map_err(|e| unreachable(&e))?;
        let identity = tls::Identity::new(&self.key)?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(identity.client_config(self.expected, self.alpn)?));
        // Keep-alives hold the connection through a blocking query's wait.
        cfg.transport_config(Arc::new(transport_config(&QuicConfig::default(), false)?));
        let conn = endpoint
            .connect_with(cfg, remote, SERVER_NAME)
            .map_err(|e| unreachable(&e))?
            .await
            .map_err(|e| classify(&addr, e))?;
        self.conn = Some((endpoint, conn.clone()));
        Ok(conn)
    }

    /// Connects now, within `timeout`, unless the connection is already open: the first call
    /// then pays no handshake (a load tool starts its clock after this). A failure leaves the
    /// client as new; the next call connects again.
    #[tracing::instrument(name = "quic_admin_open", level = "debug", skip(self), fields(addr = %self.addr))]
    pub async fn open(&mut self, timeout: Duration) -> Result<(), TransportError> {
        let addr = self.addr.clone();
        let result = tokio::time::timeout(timeout, self.connect())
            .await
            .map_err(|_| TransportError::Timeout { peer: addr, after: timeout })
            .and_then(|r| r.map(drop));
        if result.is_err() {
            self.close();
        }
        result
    }

    /// One request on the kept connection, within `timeout` (connecting included). Returns the
    /// key the node proved it holds, with its answer. A failure drops the connection; the
    /// next call connects again.
    #[tracing::instrument(name = "quic_admin_call", level = "debug", skip(self, req), fields(addr = %self.addr, kind = req.kind()))]
    pub async fn call(&mut self, req: RpcRequest, timeout: Duration) -> Result<(NodeId, RpcResponse), TransportError> {
        let addr = self.addr.clone();
        let result = tokio::time::timeout(timeout, async {
            let conn = self.connect().await?;
            exchange(&conn, &addr, &req).await
        })
        .await
        .map_err(|_| TransportError::Timeout { peer: addr.clone(), after: timeout })
        .and_then(|r| r);
        if result.is_err() {
            self.close();
        }
        result
    }

    /// Closes the connection and waits (at most `patience`) until the node has been told, so
    /// its place there is free at once. Dropping the client also closes it, but a process that
    /// exits right after may not get the close out: the node then holds the place until the
    /// connection's idle timeout.
    pub async fn finish(&mut self, patience: Duration) {
        if let Some((endpoint, conn)) = self.conn.take() {
            close(&conn, close_code::SHUTDOWN, "done");
            let _ = tokio::time::timeout(patience, endpoint.wait_idle()).await;
        }
    }

    fn close(&mut self) {
        if let Some((_, conn)) = self.conn.take() {
            close(&conn, close_code::SHUTDOWN, "done");
        }
    }
}

impl Drop for AdminClient {
    fn drop(&mut self) {
        self.close();
    }
}
