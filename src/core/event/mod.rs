//! Spore events: what is signed, how it is encoded canonically, and how it is chained.
//!
//! The **canonical encoding** is BCS (Binary Canonical Serialization) of the types below, in
//! field order. It is what is hashed and signed, and it is specified byte for byte in
//! `schema/events.md` and pinned by the golden vectors in `schema/vectors/`. The on-disk
//! record format (rkyv) is separate and may change without invalidating any signature.
//!
//! One job per file: what an event says (`body.rs`: [`EventBody`] and the announcements it
//! carries), what its author signs and how it is encoded (`signed.rs`: [`SignedEvent`], the
//! signing message, the fingerprint) and its place in the chain (`chain.rs`: [`ChainedEvent`],
//! the chain hash). The schema version and the signature domains are here.

mod body;
mod chain;
mod filter;
mod signed;

pub use body::{
    ArchivedEventBody, ArchivedNodeAnnouncement, ArchivedServiceAnnouncement, ArchivedSplitBrainResolution, EventBody,
    EventBodyResolver, NodeAnnouncement, NodeAnnouncementResolver, ServiceAnnouncement, ServiceAnnouncementResolver,
    SplitBrainResolution, SplitBrainResolutionResolver,
};
pub use chain::{chain_hash, ArchivedChainedEvent, ChainedEvent, ChainedEventResolver};
pub use filter::{EventFilter, FilterState};
pub(crate) use signed::{canonical_bytes, signing_message_from_canonical};
pub use signed::{network_fingerprint, ArchivedSignedEvent, SignedEvent, SignedEventResolver};

/// The version of the event schema this code writes and accepts.
pub const SCHEMA_VERSION: u16 = 1;

/// Domain tag prefixed to every event signature.
pub const DOMAIN_EVENT_SIGNATURE: &[u8] = b"mycnet-spores/v1/event-signature\0";
/// Domain tag of the network fingerprint hash.
pub const DOMAIN_FINGERPRINT: &[u8] = b"mycnet-spores/v1/network-fingerprint\0";
/// Domain tag of the state digest a state checkpoint event attests.
pub const DOMAIN_STATE_DIGEST: &[u8] = b"mycnet-spores/v1/state-digest\0";
