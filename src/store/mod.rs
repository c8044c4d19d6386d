//! Storage adapters on fjall: the chained ledger with its projection checkpoints, replay,
//! read-only inspection, and node key files; the [`chain_store::ChainStore`] seam a gossip
//! adapter stores through, with an in-memory implementation ([`mem::MemChain`]) for
//! simulations of thousands of nodes.
//!
//! **Architecture Invariant:** bytes read from disk reach the core only through
//! [`record::decode_record`] / [`record::decode_checkpoint`] (validated rkyv access) followed by
//! chain checks; nothing here trusts what it reads.

mod attested;
pub mod chain_store;
mod chainer;
pub mod error;
pub mod inspect;
pub mod keyfile;
pub mod ledger;
pub mod mem;
pub mod metrics;
pub mod modes;
pub mod provisional;
pub(crate) mod range_checks;
pub(crate) mod recent;
pub mod record;
pub mod replay;
pub mod scrub;
pub mod synth;
pub mod verified;
pub mod verify_pool;
