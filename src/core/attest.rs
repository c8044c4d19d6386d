//! State attestation: the digest of a projection's state that state checkpoint events carry,
//! and what a replica records when its own state differs from the one the chain attests.
//!
//! `state digest = blake3(DOMAIN_STATE_DIGEST ‖ BCS(ProjectionState))` (`schema/encoding.md`,
//! *State digest*). BCS of the state is canonical: its maps are ordered, every field is
//! fixed-width or length-prefixed, so every replica that reached the same state computes the
//! same digest, and none that reached another state does.

use super::event::DOMAIN_STATE_DIGEST;
use super::projection::ProjectionState;
use super::types::StateDigest;

/// The digest of `state` (see the module doc).
///
/// BCS refuses only containers nested beyond its depth limit or sequences over `2^31`
/// elements, which a projection's state never holds (the rules bound every list); if it ever
/// did, the digest would be of the error marker, which no state checkpoint attests, so the
/// replica reports a divergence rather than passing silently.
pub fn state_digest(state: &ProjectionState) -> StateDigest {
    let mut h = blake3::Hasher::new();
    h.update(DOMAIN_STATE_DIGEST);
    if bcs::serialize_into(&mut h, state).is_err() {
        let mut marker = blake3::Hasher::new();
        marker.update(DOMAIN_STATE_DIGEST);
        marker.update(b"unencodable state");
        return StateDigest(*marker.finalize().as_bytes());
    }
    StateDigest(*h.finalize().as_bytes())
}

/// A state checkpoint event whose attested digest differs from the state this projection
/// had reached at its `head_seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateDivergence {
    /// The seq of the state checkpoint event.
    pub seq: u64,
    /// The head it attests (the state's seq).
    pub head_seq: u64,
    /// What the chain attests.
    pub attested: StateDigest,
    /// What this projection had.
    pub computed: StateDigest,
}

impl std::fmt::Display for StateDivergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the state checkpoint at seq {} attests state {} at seq {}, this replica has {}",
            self.seq,
            self.attested.short(),
            self.head_seq,
            self.computed.short()
        )
    }
}
