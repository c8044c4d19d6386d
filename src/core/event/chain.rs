//! An event at its place in the chain: [`ChainedEvent`] and the chain hash that links it to
//! the one before.

use serde::{Deserialize, Serialize};

use super::SignedEvent;
use crate::core::types::ChainHash;

/// An event at its place in the chain.
///
/// `hash = blake3(prev_hash || seq as 8 big-endian bytes || canonical event bytes)`. The
/// chain is computed when the event is applied, identically on every replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ChainedEvent {
    /// Position in the ledger; genesis is 0.
    pub seq: u64,
    /// The hash of the event at `seq - 1` ([`ChainHash::ZERO`] for genesis).
    pub prev_hash: ChainHash,
    /// This link's hash.
    pub hash: ChainHash,
    /// The signed event.
    pub event: SignedEvent,
}

/// The chain hash of an event: `blake3(prev_hash || seq_be || event_bytes)`.
pub fn chain_hash(prev_hash: &ChainHash, seq: u64, event_bytes: &[u8]) -> ChainHash {
    // Most events fit one blake3 chunk with the prefix: hashing one contiguous buffer in one
    // call takes the single-chunk path (whole blocks compressed straight from the input),
    // cheaper than three incremental updates. Same bytes, same hash.
    const ONE_CHUNK: usize = 1024;
    const PREFIX: usize = 32 + 8;
    if event_bytes.len() <= ONE_CHUNK - PREFIX {
        let mut buf = [0u8; ONE_CHUNK];
        buf[..32].copy_from_slice(prev_hash.as_bytes());
        buf[32..PREFIX].copy_from_slice(&seq.to_be_bytes());
        buf[PREFIX..PREFIX + event_bytes.len()].copy_from_slice(event_bytes);
        return ChainHash(*blake3::hash(&buf[..PREFIX + event_bytes.len()]).as_bytes());
    }
    let mut h = blake3::Hasher::new();
    h.update(prev_hash.as_bytes());
    h.update(&seq.to_be_bytes());
    h.update(event_bytes);
    ChainHash(*h.finalize().as_bytes())
}

impl ChainedEvent {
    /// Links `event` after `prev_hash` at `seq`.
    pub fn link(seq: u64, prev_hash: ChainHash, event: SignedEvent) -> Self {
        let hash = chain_hash(&prev_hash, seq, &event.canonical_bytes());
        ChainedEvent { seq, prev_hash, hash, event }
    }

    /// Recomputes the hash and compares it with the stored one.
    pub fn hash_is_valid(&self) -> bool {
        chain_hash(&self.prev_hash, self.seq, &self.event.canonical_bytes()) == self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-buffer path of `chain_hash` gives the hash of `prev ‖ seq BE ‖ bytes` at every
    /// length around its bound.
    #[test]
    fn chain_hash_is_blake3_of_the_concatenation() {
        let prev = ChainHash([7; 32]);
        for len in [0usize, 1, 24, 64, 983, 984, 985, 1024, 3000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 13) as u8).collect();
            let mut all = prev.as_bytes().to_vec();
            all.extend_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
            all.extend_from_slice(&bytes);
            assert_eq!(chain_hash(&prev, 0x0102_0304_0506_0708, &bytes).0, *blake3::hash(&all).as_bytes(), "len {len}");
        }
    }

    #[test]
    fn chain_hash_depends_on_every_input() {
        let a = chain_hash(&ChainHash::ZERO, 1, b"x");
        assert_ne!(a, chain_hash(&ChainHash([1; 32]), 1, b"x"));
        assert_ne!(a, chain_hash(&ChainHash::ZERO, 2, b"x"));
        assert_ne!(a, chain_hash(&ChainHash::ZERO, 1, b"y"));
    }
}
