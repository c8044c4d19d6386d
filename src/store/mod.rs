//! Storage adapters on fjall: the chained ledger with its projection checkpoints, replay,
//! read-only inspection, and node key files.
//!
//! **Architecture Invariant:** bytes read from disk reach the core only through
//! [`record::decode_record`] / [`record::decode_checkpoint`] (validated rkyv access) followed by
//! chain checks; nothing here trusts what it reads.

mod attested;
mod chainer;
pub mod error;
pub mod inspect;
pub mod keyfile;
pub mod ledger;
pub mod metrics;
pub mod modes;
pub mod provisional;
pub(crate) mod recent;
pub mod record;
pub mod replay;
pub mod scrub;
pub mod synth;
pub mod verified;
