//! The wire layer: every versioned message nodes exchange, as plain data — no I/O, and no
//! tokio, quinn or openraft.
//!
//! Its files: [`rpc`] (the RPC envelope, request and response, and the peer names and
//! failures it carries), [`query`] (registry and chain queries and their answers), [`status`]
//! (what a node reports about itself) and [`gossip`] (the latent tier's frames, encoded and
//! decoded within their limits).
//!
//! Two things inside these messages belong to higher layers, and are carried generically
//! rather than named: openraft's messages, whose types need the raft layer's type
//! configuration ([`rpc::RaftMessages`], instantiated as `crate::raft::RpcRequest`), and the
//! ledger record format that gossip range frames carry verbatim ([`gossip::RecordFormat`],
//! `crate::store::record`'s, given as `crate::net::gossip::LedgerRecords`). Neither changes a
//! byte on the wire.
//!
//! **Architecture Invariant:** this layer imports only `core`.

pub mod gossip;
pub mod query;
pub mod rpc;
pub mod status;
