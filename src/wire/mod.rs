//! The wire layer: every versioned message nodes exchange, as plain data — no I/O, and no
//! tokio, quinn or openraft.
//!
//! Its files: [`rpc`] (the RPC envelope, request and response, and the peer names and
//! failures it carries), [`query`] (registry and chain queries and their answers) and
//! [`status`] (what a node reports about itself).
//!
//! openraft's messages inside an RPC belong to a higher layer: their types need the raft
//! layer's type configuration. They are carried generically rather than named
//! ([`rpc::RaftMessages`], instantiated as `crate::raft::RpcRequest`), which changes no byte
//! on the wire.
//!
//! **Architecture Invariant:** this layer imports only `core`.

pub mod query;
pub mod rpc;
pub mod status;
