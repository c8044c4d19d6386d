//! The pure core: event types, canonical encoding, chain, signatures and projections.
//!
//! **Architecture Invariant:** nothing in `core` does I/O, spawns a task or reads the clock.
//! Inputs arrive as values (including timestamps), outputs are values.

pub mod attest;
pub mod authority;
pub(crate) mod canonical;
pub mod compact;
pub mod event;
pub mod gossip;
pub mod health;
pub mod keys;
pub mod limits;
pub mod modes;
pub mod projection;
pub mod provisional;
pub mod sync;
pub mod types;
