//! Node keys (ed25519) and signature verification with a key cache and batching.
//!
//! Acceptance rule (see `schema/signatures.md`): a signature is valid when ed25519
//! `verify_strict` accepts it for the author's key and the event's signing message, and the
//! author's key is not a weak (small-order) key. Batches are verified with `verify_batch` as a
//! fast path; when a batch fails, each signature in it is checked with `verify_strict` to find
//! the bad one(s).

use std::collections::HashMap;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use super::types::{NodeId, SignatureBytes};

/// A node's secret signing key. Its public half is the node's [`NodeId`].
#[derive(Clone)]
pub struct NodeKey {
    signing: SigningKey,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey({})", self.node_id().short())
    }
}

/// The operating system's random number generator failed.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RandomnessError(String);

impl NodeKey {
    /// A fresh key from the operating system's random number generator.
    pub fn generate() -> Result<Self, RandomnessError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| RandomnessError(e.to_string()))?;
        Ok(Self::from_seed(seed))
    }

    /// A key from its 32-byte secret seed (deterministic: for tests, generators and key files).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        NodeKey { signing: SigningKey::from_bytes(&seed) }
    }

    /// The 32-byte secret seed. Handle with care.
    pub fn to_seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The node id (= public key).
    pub fn node_id(&self) -> NodeId {
        NodeId(self.signing.verifying_key().to_bytes())
    }

    /// The public key as a verifier.
    pub fn verifying_key(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key())
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> SignatureBytes {
        SignatureBytes(self.signing.sign(msg).to_bytes())
    }

    /// The underlying dalek key (for TLS certificates).
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }
}

/// A decompressed, checked ed25519 public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicKey(pub VerifyingKey);

impl PublicKey {
    /// Decompresses a node id; fails for bytes that are not a curve point or are a weak key.
    pub fn from_node_id(id: &NodeId) -> Option<Self> {
        let vk = VerifyingKey::from_bytes(id.as_bytes()).ok()?;
        if vk.is_weak() {
            return None;
        }
        Some(PublicKey(vk))
    }

    /// `verify_strict` of one message.
    pub fn verify_strict_msg(&self, msg: &[u8], sig: &SignatureBytes) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
        self.0.verify_strict(msg, &sig).is_ok()
    }
}

/// Caches decompressed verifying keys per author (decompression is ~12 % of a verify).
///
/// Bounded: when it holds [`VerifierCache::CAPACITY`] keys it is cleared, which costs at most
/// one decompression per author afterwards.
#[derive(Default, Debug)]
pub struct VerifierCache {
    keys: HashMap<NodeId, Option<PublicKey>>,
}

impl VerifierCache {
    /// The most keys kept before the cache is cleared.
    pub const CAPACITY: usize = 65_536;

    /// The key for `id`, or `None` if the bytes are not a valid, strong public key.
    pub fn key(&mut self, id: &NodeId) -> Option<PublicKey> {
        if let Some(k) = self.keys.get(id) {
            return *k;
        }
        if self.keys.len() >= Self::CAPACITY {
            self.keys.clear();
        }
        let k = PublicKey::from_node_id(id);
        self.keys.insert(*id, k);
        k
    }
}

/// Verifies `(author, message, signature)` triples; returns one verdict per item, in order.
///
/// Uses `verify_batch` on the whole slice first; only if that fails does it fall back to
/// per-item `verify_strict`. Items whose key is invalid are `false`.
pub fn verify_many(cache: &mut VerifierCache, items: &[(NodeId, &[u8], SignatureBytes)]) -> Vec<bool> {
    let mut keys = Vec::with_capacity(items.len());
    let mut all_keys_ok = true;
    for (id, _, _) in items {
        let k = cache.key(id);
        all_keys_ok &= k.is_some();
        keys.push(k);
    }
    if all_keys_ok && !items.is_empty() {
        let vks: Vec<VerifyingKey> = keys.iter().flatten().map(|k| k.0).collect();
        let msgs: Vec<&[u8]> = items.iter().map(|(_, m, _)| *m).collect();
        let sigs: Vec<ed25519_dalek::Signature> =
            items.iter().map(|(_, _, s)| ed25519_dalek::Signature::from_bytes(&s.0)).collect();
        if ed25519_dalek::verify_batch(&msgs, &sigs, &vks).is_ok() {
            return vec![true; items.len()];
        }
    }
    items
        .iter()
        .zip(keys)
        .map(|((_, msg, sig), k)| k.is_some_and(|k| k.verify_strict_msg(msg, sig)))
        .collect()
}

/// The signing messages of a batch of signatures, back to back, each with its author and
/// signature: built one at a time, then checked together by [`verify_many`].
#[derive(Default)]
pub(crate) struct SigningBatch {
    msgs: Vec<u8>,
    /// Author, end offset of the message in `msgs`, signature.
    items: Vec<(NodeId, usize, SignatureBytes)>,
}

impl SigningBatch {
    /// An empty batch with room for `n` signatures.
    pub(crate) fn with_capacity(n: usize) -> Self {
        SigningBatch { msgs: Vec::with_capacity(n * 320), items: Vec::with_capacity(n) }
    }

    /// Adds the signature over the event whose canonical encoding is `canonical` (its signing
    /// message is a rearrangement of those bytes). An encoding always holds the fixed fields;
    /// if it did not, the message would be empty and the signature would not verify.
    pub(crate) fn push_canonical(&mut self, author: NodeId, signature: SignatureBytes, canonical: &[u8]) {
        let _ = crate::core::event::signing_message_from_canonical(canonical, &mut self.msgs);
        self.items.push((author, self.msgs.len(), signature));
    }

    /// Adds the signature of `event`, encoding its signing message.
    pub(crate) fn push_event(&mut self, event: &crate::core::event::SignedEvent) {
        event.write_signing_message(&mut self.msgs);
        self.items.push((event.author, self.msgs.len(), event.signature));
    }

    /// One verdict per signature added, in order ([`verify_many`]).
    pub(crate) fn verify(&self, cache: &mut VerifierCache) -> Vec<bool> {
        let mut start = 0;
        let items: Vec<(NodeId, &[u8], SignatureBytes)> = self
            .items
            .iter()
            .map(|&(author, end, signature)| {
                let msg = &self.msgs[start..end];
                start = end;
                (author, msg, signature)
            })
            .collect();
        verify_many(cache, &items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_finds_the_one_bad_signature() {
        let keys: Vec<NodeKey> = (0..8u8).map(|i| NodeKey::from_seed([i + 1; 32])).collect();
        let msgs: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 10]).collect();
        let mut sigs: Vec<SignatureBytes> = keys.iter().zip(&msgs).map(|(k, m)| k.sign(m)).collect();
        sigs[5].0[3] ^= 1;
        let items: Vec<(NodeId, &[u8], SignatureBytes)> =
            keys.iter().zip(&msgs).zip(&sigs).map(|((k, m), s)| (k.node_id(), m.as_slice(), *s)).collect();
        let verdicts = verify_many(&mut VerifierCache::default(), &items);
        assert_eq!(verdicts.iter().filter(|v| !**v).count(), 1);
        assert!(!verdicts[5]);
    }

    #[test]
    fn invalid_key_bytes_never_verify() {
        let k = NodeKey::from_seed([9; 32]);
        let sig = k.sign(b"m");
        // The identity point is a weak key.
        let mut weak = [0u8; 32];
        weak[0] = 1;
        let verdicts = verify_many(&mut VerifierCache::default(), &[(NodeId(weak), b"m".as_slice(), sig)]);
        assert_eq!(verdicts, vec![false]);
    }
}
